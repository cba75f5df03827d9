"""hostkvd's config file: parsing, line-numbered errors, atomic edits that keep comments."""
import os

import pytest
from hypothesis import given, settings, strategies as st

from hostkv.common import entries
from hostkv.hostkvd import config, hostvalues


def test_parse_values_and_daemon_options():
    cfg = config.parse('# c\n[daemon]\npublish_hostname = no\nhost_id = node-3\n'
                       '[host]\nhost.rack = r12 # not a comment\nhost.note = "  a\\nb "\n', "f.conf")
    assert cfg.publish_hostname is False
    assert cfg.host_id == "node-3"
    assert cfg.host_values == {"host.rack": "r12 # not a comment", "host.note": "  a\nb "}


@pytest.mark.parametrize("text, line, words", [
    ("[host]\nhost.ok = 1\nhots.rack = 2\n", 3, "must be 'host.' or 'vm.'"),
    ("[hots]\n", 1, "unknown section [hots]"),
    ("[host]\nvm.role = web\n", 2, "only host.* keys"),
    ("[host]\njust text\n", 2, "expected 'key = value'"),
    ("host.rack = 1\n", 1, "outside any section"),
    ("[daemon]\npublish_hostname = maybe\n", 2, "yes or no"),
    ("[daemon]\nfrobnicate = 1\n", 2, "unknown option"),
    ("[host]\nhost.a = 1\nhost.a = 2\n", 3, "set twice"),
    ("[host]\nhost.a = \"unterminated\n", 2, "bad quoted value"),
    ("[host]\nhost.big = " + "x" * 4097 + "\n", 2, "limit is 4096"),
])
def test_errors_name_the_line(text, line, words):
    with pytest.raises(config.ConfigError) as err:
        config.parse(text, "/etc/hostkv/hostkvd.conf")
    assert "/etc/hostkv/hostkvd.conf:%d:" % line in str(err.value)
    assert words in str(err.value)


def test_missing_file_is_builtins_only(tmp_path):
    cfg = config.load(str(tmp_path / "absent.conf"))
    values = hostvalues.host_values(cfg, hostname="kvm7")
    assert values == {"host.hostname": "kvm7", "host.fqdn": "kvm7"}


def test_publish_hostname_no_hides_identity():
    cfg = config.parse("[daemon]\npublish_hostname = no\n[host]\nhost.rack = r1\n")
    assert hostvalues.host_values(cfg, hostname="kvm7") == {"host.rack": "r1"}


def test_fqdn_from_hosts_file_without_dns(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.1.2.3 kvm7.dc1.example.org kvm7 # me\n")
    assert hostvalues.fqdn("kvm7", str(hosts)) == "kvm7.dc1.example.org"
    assert hostvalues.fqdn("other", str(hosts)) == "other"
    assert hostvalues.fqdn("a.b", str(hosts)) == "a.b"


def test_update_keeps_comments_and_round_trips_odd_values(tmp_path):
    path = tmp_path / "hostkvd.conf"
    path.write_text("# admin's comment\n[daemon]\npublish_hostname = yes\n\n[host]\n# rack\nhost.rack = r1\n")
    odd = "  $(reboot) `id` 'q' \"dq\"\nline2 ü "
    cfg = config.update_host_keys(str(path), {"host.rack": "r2", "host.odd": odd})
    assert cfg.host_values == {"host.rack": "r2", "host.odd": odd}
    text = path.read_text()
    assert "# admin's comment" in text and "# rack" in text
    assert config.load(str(path)).host_values["host.odd"] == odd
    cfg = config.update_host_keys(str(path), unset=["host.rack"])
    assert cfg.host_values == {"host.odd": odd}


def test_update_creates_host_section(tmp_path):
    path = tmp_path / "new.conf"
    config.update_host_keys(str(path), {"host.a": "1"})
    assert config.load(str(path)).host_values == {"host.a": "1"}
    assert oct(os.stat(str(path)).st_mode & 0o777) == "0o644"


def test_update_refuses_bad_input_and_changes_nothing(tmp_path):
    path = tmp_path / "hostkvd.conf"
    path.write_text("[host]\nhost.a = 1\n")
    before = path.read_text()
    with pytest.raises(Exception):
        config.update_host_keys(str(path), {"vm.role": "web"})
    with pytest.raises(Exception):
        config.update_host_keys(str(path), {"host.a": "x" * 5000})
    assert path.read_text() == before
    path.write_text("[host]\nbroken line\n")
    with pytest.raises(config.ConfigError):
        config.update_host_keys(str(path), {"host.a": "2"})
    assert path.read_text() == "[host]\nbroken line\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hostkvd.conf"]  # no temp files left


# ---------------------------------------------------------------- one rule with hostkvctl (issue 12)

@pytest.mark.parametrize("name", ["rack", "host.rack", "rack.row", "hots.rack", "vm.role", "r@ck", "",
                                  "host.", "a-b_c", "host.a.b"])
def test_bare_keys_follow_the_same_rule_as_hostkvctl_host_set(name):
    """`hostkvctl host set NAME=v` and a `NAME = v` line in [host] accept the same names, as the
    same key, and refuse the same names."""
    from hostkv.hostkvctl import cli
    try:
        via_cli = cli.parse_assignments([name + "=v"], "host")
    except cli.Failure:
        via_cli = None
    try:
        via_file = config.parse("[host]\n%s = v\n" % name).host_values if name else None
    except config.ConfigError as err:
        assert ":2: " in str(err)
        via_file = None
    assert via_cli == via_file
    if name in ("rack", "host.rack"):
        assert via_file == {"host.rack": "v"}


def test_bare_and_full_spelling_of_one_key_is_set_twice():
    with pytest.raises(config.ConfigError, match=r":3: host.rack is set twice"):
        config.parse("[host]\nrack = 1\nhost.rack = 2\n", "f")


def test_update_matches_bare_lines_and_keeps_their_spelling(tmp_path):
    path = tmp_path / "hostkvd.conf"
    path.write_text("[host]\n# rack of this host\nrack = r1\nrow = 3\n")
    cfg = config.update_host_keys(str(path), {"host.rack": "r2"}, unset=["host.row"])
    assert cfg.host_values == {"host.rack": "r2"}
    assert path.read_text() == "[host]\n# rack of this host\nrack = r2\n"


# ---------------------------------------------------------------- values (issue 10 item 4)

def test_a_value_outside_the_rule_names_file_line_and_character():
    with pytest.raises(config.ConfigError) as err:
        config.parse('[host]\nhost.ok = 1\nhost.bad = "a\\u0001b"\n', "/etc/hostkv/hostkvd.conf")
    assert str(err.value) == ("/etc/hostkv/hostkvd.conf:3: value of host.bad has U+0001 (a control "
                              "character) at character 2; " + entries.VALUE_RULE)


def test_lines_end_at_lf_only_and_crlf_files_parse():
    text = "[host]\r\nhost.sep = a\u2028b\u0085c\r\nhost.x = 1\r\n"
    assert config.parse(text).host_values == {"host.sep": "a\u2028b\u0085c", "host.x": "1"}


@pytest.mark.parametrize("value", ["x\r\ny\r", "\r", "  lead", "trail ", "\t", "", '"quoted"', "a\u2028b",
                                   "\x85\x9f\x7f", "# not a comment", "k = v", "\U0001f600", "\ufffd"])
def test_tricky_values_round_trip_through_the_file(tmp_path, value):
    path = tmp_path / "hostkvd.conf"
    config.update_host_keys(str(path), {"host.v": value})
    assert config.load(str(path)).host_values == {"host.v": value}
    assert len(path.read_text(encoding="utf-8").split("\n")) == 3      # [host], the line, the end


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=50))
def test_every_allowed_value_round_trips_and_every_other_is_refused(value):
    """Property: format_value/parse deliver every value the shared rule allows byte for byte, and
    the file refuses (path:line) exactly the values the rule refuses."""
    try:
        entries.validate_value("host.v", value)
        allowed = True
    except entries.EntryError:
        allowed = False
    text = "[host]\nhost.v = %s\n" % config.format_value(value)
    if allowed:
        assert config.parse(text, "f").host_values == {"host.v": value}
    else:
        with pytest.raises(config.ConfigError, match=r"^f:2: value of host.v has U\+"):
            config.parse(text, "f")
