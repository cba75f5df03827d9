"""hostkvd's config file: parsing, line-numbered errors, atomic edits that keep comments."""
import os

import pytest

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
