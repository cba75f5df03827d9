"""The env file: sourced by a real /bin/sh, every value must come back byte-exact."""

import os
import subprocess

import pytest

from hostkv.agent import envfile

NASTY = {
    "host.hostname": "hv1.example.org",
    "host.cmd": "$(reboot)",
    "host.backticks": "`reboot` and ${HOME} and $HOME",
    "host.quotes": "it's \"quoted\" 'twice' '\\'' \\",
    "host.newlines": "line1\nline2\n\n",
    "host.trailing-space": "  spaced  \t",
    "host.utf8": "Zürich – 東京 – 🚀",
    "host.empty": "",
    "host.semicolon": "a; rm -rf / #",
    "vm.glob": "* ? [a-z] ~",
    "vm.cr": "dos\r\nline",
    "vm.only-quote": "'",
}


def _source_and_dump(env_path, names):
    """Source the file with /bin/sh and print each variable NUL-terminated."""
    script = ". %s\n" % envfile.shell_quote(env_path)
    for name in names:
        script += 'printf "%%s\\0" "${%s-<UNSET>}"\n' % name
    out = subprocess.run(["/bin/sh", "-c", script], stdout=subprocess.PIPE, check=True,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=10).stdout
    parts = out.split(b"\0")
    assert parts[-1] == b""
    return parts[:-1]


def test_values_round_trip_byte_exact_through_sh(tmp_path):
    path = tmp_path / "env"
    path.write_bytes(envfile.render_env(NASTY, seq=7).encode("utf-8"))
    keys = sorted(NASTY)
    got = _source_and_dump(str(path), [envfile.env_name(k) for k in keys])
    for key, raw in zip(keys, got):
        assert raw == NASTY[key].encode("utf-8"), key


def test_sourcing_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    values = {"host.a": "$(touch %s)" % marker, "host.b": "`touch %s`" % marker,
              "host.c": "'; touch %s; '" % marker}
    path = tmp_path / "env"
    path.write_text(envfile.render_env(values))
    _source_and_dump(str(path), ["HOSTKV_HOST_A"])
    assert not marker.exists()


def test_names():
    assert envfile.env_name("host.hostname") == "HOSTKV_HOST_HOSTNAME"
    assert envfile.env_name("vm.rack-row.3") == "HOSTKV_VM_RACK_ROW_3"
    with pytest.raises(ValueError):
        envfile.env_name("host.a b")


def test_collisions_first_sorted_wins_others_commented(tmp_path):
    values = {"host.a-b": "dash", "host.a.b": "dot", "host.A_B": "upper"}
    text = envfile.render_env(values)
    # sorted order: host.A_B < host.a-b < host.a.b
    assert "HOSTKV_HOST_A_B='upper'" in text
    assert "# host.a-b omitted: HOSTKV_HOST_A_B is already used by host.A_B" in text
    assert "# host.a.b omitted" in text
    assert text.count("HOSTKV_HOST_A_B=") == 1


def test_reserved_and_nul_are_omitted_with_comment(tmp_path):
    values = {"host.id": "x", "host.changed": "y", "host.nul": "a\0b", "host.ok": "fine"}
    text = envfile.render_env(values)
    assert "# host.id omitted: HOSTKV_HOST_ID is reserved for hooks" in text
    assert "# host.changed omitted" in text
    assert "# host.nul omitted: its value contains a NUL character" in text
    assert "HOSTKV_HOST_OK='fine'" in text
    path = tmp_path / "env"
    path.write_text(text)
    assert _source_and_dump(str(path), ["HOSTKV_HOST_OK", "HOSTKV_HOST_ID"]) == [b"fine", b"<UNSET>"]
