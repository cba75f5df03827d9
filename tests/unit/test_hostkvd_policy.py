"""hostkvd's privacy policy (hostkvd/policy.py) and its config, and the Cobbler key source's host
keys, in the real hostkvd process over real unix sockets (FakePort plays QEMU; Cobbler is the FAKE
of tests/harness/fake_cobbler.py).  The per-guest policy in domain metadata across a live migration
is tests/libvirt/test_privacy_policy.py; the real cobblerd is tests/cobbler_live/."""
import time
import uuid

import pytest

from hostkv.hostkvd import config, policy
from tests.harness.fake_cobbler import FakeCobbler
from tests.harness.fake_port import FakePort
from tests.harness.hostkvd_proc import HostkvdProcess

HOST_VALUES = {"host.hostname": "kvm7", "host.fqdn": "kvm7.example", "host.rack": "r7"}


def test_policies():
    p = policy.Privacy(secret=b"machine-id-1")
    assert p.apply("all", HOST_VALUES, "hid", "g1") == (HOST_VALUES, "hid")
    values, host_id = p.apply("opaque", HOST_VALUES, "hid", "g1")
    assert values == {"host.rack": "r7", "host.id": host_id} and host_id != "hid"
    assert uuid.UUID(host_id).version == 4
    assert p.apply("opaque", HOST_VALUES, "hid", "g2")[1] == host_id         # per host, not per guest
    assert policy.Privacy(secret=b"machine-id-1").host_opaque_id("hid") == host_id   # stable
    assert policy.Privacy(secret=b"machine-id-2").host_opaque_id("hid") != host_id   # keyed
    assert p.host_opaque_id("other-host") != host_id
    none1, none2 = p.apply("none", HOST_VALUES, "hid", "g1"), p.apply("none", HOST_VALUES, "hid", "g2")
    assert none1[0] == {} and none2[0] == {}
    assert len(set([none1[1], none2[1], host_id, "hid"])) == 4     # not even co-location shows
    assert policy.Privacy("fleet-id-7", secret=b"x").apply("opaque", HOST_VALUES, "hid", "g")[1] == "fleet-id-7"


def test_config_policy_options():
    cfg = config.parse("[daemon]\ndefault_policy = opaque\nopaque_host_id = fleet-7\n")
    assert (cfg.default_policy, cfg.opaque_host_id) == ("opaque", "fleet-7")
    assert config.parse("").default_policy == "all"
    for text, words in (("[daemon]\ndefault_policy = hidden\n", "f:2: default_policy must be one of all, none, opaque"),
                        ("[daemon]\nopaque_host_id = \x01\n", "f:2: opaque_host_id:"),
                        ("[cobbler]\nserver = c\n[cobbler]\n", "f:3: section [cobbler] is given twice"),
                        ("[cobbler]\nserver = c\nevery = 5\n", "f:3: unknown option 'every' in [cobbler]"),
                        ("[cobler]\n", "f:1: unknown section [cobler] (known: [daemon], [host], [cobbler])")):
        with pytest.raises(config.ConfigError) as err:
            config.parse(text, "f")
        assert str(err.value).startswith(words), str(err.value)
    assert config.parse("[cobbler]\nserver = c\ninterval = 2\n").keysources["cobbler"]["interval"] == 2.0
    assert config.parse("[cobbler]\nserver =\n").keysources == {}      # present but off


@pytest.fixture
def fake():
    f = FakeCobbler().start()
    f.profile("p", {})
    f.system("kvm-under-test", "p", {"hostkv_host_rack": "r7", "hostkv_host_hostname": "from-cobbler"})
    yield f
    f.stop()


def test_cobbler_host_keys_reach_every_guest_with_origins_and_policies(tmp_path, fake):
    ports = [FakePort(tmp_path / "g1.sock"), FakePort(tmp_path / "g2.sock")]
    conf = ("[daemon]\ndefault_policy = opaque\n[host]\nhost.row = 3\n[cobbler]\nserver = %s\n"
            "interval = 0.3\nhost_system = kvm-under-test\ncache = %s\n" % (fake.url, tmp_path / "c.json"))
    d = HostkvdProcess(tmp_path, channels=[p.path for p in ports], host_id="host-under-test", config_text=conf)
    d.start()
    try:
        guests = [p.accept() for p in ports]
        for g in guests:
            snap = g.frame_where(lambda f: f.get("values", {}).get("host.rack") == "r7")
            # opaque by default here: the host's names are not given, Cobbler's override included
            assert "host.hostname" not in snap["values"] and "host.fqdn" not in snap["values"]
            assert snap["values"]["host.id"] == snap["host_id"] != "host-under-test"
            assert snap["values"]["host.row"] == "3"
        status = d.control({"op": "status"})["status"]
        assert status["host_origins"]["host.rack"] == "cobbler"
        assert status["host_origins"]["host.row"] == "config"
        assert status["host_origins"]["host.hostname"] == "cobbler"       # a key source over a built-in
        assert status["keysources"]["cobbler"]["state"] == "ok"
        assert status["keysources"]["cobbler"]["host_record"] == "kvm-under-test"
        assert [ch["policy"] for ch in status["channels"]] == ["opaque", "opaque"]
        assert [ch["policy_from"] for ch in status["channels"]] == ["default", "default"]
        # a Cobbler edit reaches both guests; the config's [host] wins over Cobbler's key
        fake.system("kvm-under-test", "p", {"hostkv_host_rack": "r8", "hostkv_host_row": "cobbler-row"})
        for g in guests:
            snap = g.frame_where(lambda f: f.get("values", {}).get("host.rack") == "r8")
            assert snap["values"]["host.row"] == "3"
        # Cobbler goes away: nothing is pushed, the values stay, status says since when
        fake.mode = "down"
        mark = d.log_size()
        d.wait_log("cobbler: unreachable", after=mark)
        status = d.control({"op": "status"})["status"]
        assert "unreachable since" in status["keysources"]["cobbler"]["summary"]
        assert status["host_values"]["host.rack"] == "r8"
        pushes = [ch["pushes"] for ch in status["channels"]]
        time.sleep(1.5)
        status = d.control({"op": "status"})["status"]
        assert [ch["pushes"] for ch in status["channels"]] == pushes
        assert d.log()[mark:].count("cobbler: unreachable") == 1
    finally:
        d.stop()
        for p in ports:
            p.close()
