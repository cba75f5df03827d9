"""hostkvd's Cobbler key source against a FAKE Cobbler (tests/harness/fake_cobbler.py) and a
stand-in for hostkvd's KeySourceAPI that keeps guests' metadata in memory.  Fast; the real
cobblerd + libvirt + guest version is tests/cobbler_live/."""
import asyncio
import json
import logging

import pytest

from hostkv.common import domain_xml as dx
from hostkv.hostkvd import keysources
from hostkv.hostkvd.keysources import cobbler
from tests.harness.fake_cobbler import FakeCobbler

INTERVAL = 0.2


class FakeAPI(object):
    """Guests' metadata in memory; write_links applies writes the way the metadata writer would
    and then tells the source, as libvirt's metadata-change event does."""

    def __init__(self):
        self.metas = {}            # key -> HostkvMetadata
        self.host_values = None
        self.host_sets = []
        self.writes = []           # (key, values) of every link written
        self.writable = True
        self.source = None
        self.fail_writes = None

    def link(self, key, system=None, profile=None, server=None, keys=None, local=None):
        attrs = dict((k, v) for k, v in (("system", system), ("profile", profile), ("server", server)) if v)
        self.metas[key] = dx.HostkvMetadata(local or {}, None, [dx.SourceLink("cobbler", attrs, keys or {})])
        if self.source:
            self.source.guests_changed()

    def set_host_values(self, values):
        self.host_values = dict(values)
        self.host_sets.append(dict(values))
        return None

    def guests(self):
        return [keysources.Guest(k, "dom-" + k, m) for k, m in sorted(self.metas.items())]

    async def write_links(self, links):
        out = {}
        for key, link in links.items():
            if self.fail_writes:
                out[key] = self.fail_writes
                continue
            meta = self.metas[key].copy()
            meta.set_source(link)
            self.metas[key] = meta
            self.writes.append((key, dict(link.values)))
            out[key] = None
        asyncio.get_event_loop().call_soon(self.source.guests_changed)
        return out

    def values(self, key):
        return self.metas[key].effective()[0]


@pytest.fixture
def fake():
    f = FakeCobbler().start()
    f.profile("web", {"hostkv_enabled": "1", "hostkv_vm_tier": "front"})
    f.system("web1", "web", {"hostkv_vm_role": "web"})
    f.system("web2", "web", {"hostkv_vm_role": "cache"})
    f.system("kvm7", "web", {"hostkv_host_rack": "r7"})
    yield f
    f.stop()


def options(fake, tmp_path, interval=INTERVAL, **extra):
    items = [("server", fake.url, "t:1"), ("interval", str(interval), "t:2"),
             ("cache", str(tmp_path / "cache.json"), "t:3")]
    items += [(k, str(v), "t:%d" % (10 + i)) for i, (k, v) in enumerate(extra.items())]
    return cobbler.parse_options(items)


class Running(object):
    def __init__(self, loop, opts, api, hostname="kvm7"):
        self.loop, self.api = loop, api
        self.source = cobbler.Source(opts, api, hostname=hostname)
        api.source = self.source
        self.task = loop.create_task(self.source.run())

    def until(self, predicate, timeout=10.0, what="condition"):
        async def wait():
            deadline = self.loop.time() + timeout
            while not predicate():
                if self.loop.time() > deadline:
                    raise AssertionError("timed out waiting for %s; status %s" % (
                        what, json.dumps(self.source.status(), indent=1, default=str)))
                await asyncio.sleep(0.02)
        self.loop.run_until_complete(wait())

    def sleep(self, seconds):
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def stop(self):
        """Cancel the source as KeySources does on reload and shutdown; it must end."""
        self.task.cancel()
        self.loop.run_until_complete(asyncio.wait((self.task,), timeout=10))
        if not self.task.done():
            for _ in range(20):                  # don't leave it running into the next test
                self.task.cancel()
                self.loop.run_until_complete(asyncio.wait((self.task,), timeout=0.5))
            raise AssertionError("the source ran on after it was cancelled (state %s)" % self.source.state)
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))


def test_linked_guests_get_their_systems_keys_once_and_polls_stay_tiny(fake, loop, tmp_path):
    api = FakeAPI()
    api.link("g1", system="web1")
    api.link("g2", system="web2", keys={"vm.role": "cache", "vm.tier": "front"})   # as koan wrote them
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: api.values("g1") == {"vm.role": "web", "vm.tier": "front"}, what="g1's keys")
        assert api.host_values == {"host.rack": "r7"}              # this host's record, by host name
        run.sleep(INTERVAL * 4)
        assert [k for k, _v in api.writes] == ["g1"]              # g2 already had them: nothing written
        reads = fake.calls["get_blended_data"]
        assert reads == 3                                          # g1, g2, the host: once each
        polls = fake.calls["last_modified_time"]
        run.sleep(INTERVAL * 3)
        assert fake.calls["last_modified_time"] > polls            # it keeps polling ...
        assert fake.calls["get_blended_data"] == reads             # ... and reads nothing more
        assert fake.calls["get_systems_since"] == 1                 # once, with the first (full) read
        status = run.source.status()
        assert status["state"] == "ok" and status["host_record"] == "kvm7"
        with open(str(tmp_path / "cache.json")) as f:
            assert json.load(f)["values"] == {"host.rack": "r7"}
    finally:
        run.stop()


def test_a_system_edit_reads_only_that_system_and_removing_an_option_removes_the_key(fake, loop, tmp_path):
    api = FakeAPI()
    api.link("g1", system="web1")
    api.link("g2", system="web2")
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: len(api.writes) == 2 and api.host_values is not None, what="first reads")
        reads = fake.calls["get_blended_data"]
        fake.system("web1", "web", {"hostkv_vm_role": "db", "hostkv_vm_extra": "1"})
        run.until(lambda: api.values("g1").get("vm.role") == "db", what="the edit")
        assert api.values("g1") == {"vm.role": "db", "vm.extra": "1", "vm.tier": "front"}
        run.sleep(INTERVAL * 2)
        assert fake.calls["get_blended_data"] == reads + 1         # web1 only (not web2, not the host)
        fake.system("web1", "web", {"hostkv_vm_role": "db"})       # the option removed in Cobbler
        run.until(lambda: "vm.extra" not in api.values("g1"), what="the removal")
        # a profile edit: every linked record is read again, only real differences are written
        writes = len(api.writes)
        fake.profile("web", {"hostkv_enabled": "1", "hostkv_vm_tier": "back"})
        run.until(lambda: api.values("g2").get("vm.tier") == "back", what="the profile edit")
        run.until(lambda: api.values("g1").get("vm.tier") == "back", what="the profile edit on g1")
        run.sleep(INTERVAL * 2)
        assert len(api.writes) == writes + 2
    finally:
        run.stop()


def test_local_keys_win_and_count_toward_the_limit(fake, loop, tmp_path):
    api = FakeAPI()
    api.link("g1", system="web1", local={"vm.role": "pinned"})
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: api.writes, what="the write")
        meta = api.metas["g1"]
        assert meta.source("cobbler").values == {"vm.role": "web", "vm.tier": "front"}
        assert api.values("g1") == {"vm.role": "pinned", "vm.tier": "front"}
        assert meta.shadowed() == {"vm.role": [("cobbler", "web")]}
    finally:
        run.stop()


def test_an_invalid_record_is_skipped_whole_naming_system_and_option(fake, loop, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hostkvd.cobbler")
    api = FakeAPI()
    api.link("g1", system="web1", keys={"vm.role": "web", "vm.tier": "front"})
    api.link("g2", system="web2")
    fake.system("web1", "web", {"hostkv_vm_role": "db", "hostkv_vm_r@le": "x"})   # edited before the plugin
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: api.values("g2") == {"vm.role": "cache", "vm.tier": "front"}, what="g2")
        run.sleep(INTERVAL * 3)
        assert api.values("g1") == {"vm.role": "web", "vm.tier": "front"}          # unchanged, all of it
        lines = [r.getMessage() for r in caplog.records if "hostkv_vm_r@le" in r.getMessage()]
        assert len(lines) == 1, lines                                              # once, not per poll
        assert "system web1" in lines[0] and "record skipped" in lines[0] and "dom-g1" in lines[0]
        assert run.source.status()["guests"]["dom-g1"]["problem"]
        fake.system("web1", "web", {"hostkv_vm_role": "db"})                       # fixed in Cobbler
        run.until(lambda: api.values("g1").get("vm.role") == "db", what="the fixed record")
        assert run.source.status()["guests"]["dom-g1"]["problem"] is None
    finally:
        run.stop()


def test_unreachable_keeps_everything_logs_once_and_catches_up(fake, loop, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hostkvd.cobbler")
    api = FakeAPI()
    api.link("g1", system="web1")
    api.link("g2", system="web2")
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: len(api.writes) == 2 and api.host_values, what="first reads")
        writes, host_sets = len(api.writes), len(api.host_sets)
        for mode in ("down", "garbage"):
            fake.mode = mode
            run.until(lambda: run.source.status()["state"] == "unreachable", what="unreachable")
            failed = run.source.counters["failed_polls"]
            run.until(lambda: run.source.counters["failed_polls"] >= failed + 4, what="more polls")
            status = run.source.status()
            assert "unreachable since" in status["summary"], status
            fake.system("web1", "web", {"hostkv_vm_role": "changed-while-%s" % mode})   # made meanwhile
            fake.mode = None
            run.until(lambda: api.values("g1")["vm.role"] == "changed-while-%s" % mode, what="catch-up")
        warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 2, warnings          # one per outage, not one per poll
        assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 2
        run.sleep(INTERVAL * 3)
        assert api.writes[writes:] == [("g1", {"vm.role": "changed-while-down", "vm.tier": "front"}),
                                       ("g1", {"vm.role": "changed-while-garbage", "vm.tier": "front"})]
        assert len(api.host_sets) == host_sets       # the host record did not change: not re-set
        assert api.values("g2") == {"vm.role": "cache", "vm.tier": "front"}
    finally:
        run.stop()


def test_a_server_that_wants_a_token_is_named_as_such(fake, loop, tmp_path, caplog):
    api = FakeAPI()
    for mode in ("401", "token-fault"):
        fake.mode = mode
        run = Running(loop, options(fake, tmp_path), api)
        try:
            run.until(lambda: run.source.status()["state"] == "needs-token", what=mode)
            status = run.source.status()
            assert ("HTTP 401" if mode == "401" else "invalid token") in status["reason"]
            assert "without logging in" in caplog.text and "stores no credentials" in caplog.text
        finally:
            run.stop()


def test_cache_keeps_host_keys_across_a_restart_while_cobbler_is_down(fake, loop, tmp_path):
    api = FakeAPI()
    run = Running(loop, options(fake, tmp_path), api)
    run.until(lambda: api.host_values == {"host.rack": "r7"}, what="host keys")
    run.stop()
    fake.mode = "down"
    api2 = FakeAPI()
    run = Running(loop, options(fake, tmp_path), api2)       # a restarted hostkvd
    try:
        assert api2.host_values == {"host.rack": "r7"}        # at once, from the cache
        run.until(lambda: run.source.status()["state"] == "unreachable", what="unreachable")
        assert run.source.status()["host_values_from"] == "cache"
        assert api2.host_sets == [{"host.rack": "r7"}]
    finally:
        run.stop()


def test_a_source_cancelled_in_the_turn_it_is_woken_stops(fake, loop, tmp_path):
    # CI hung here for 15 minutes: asyncio.wait_for lost the cancellation (hostkvd/timeout.py)
    api = FakeAPI()
    api.link("g1", system="web1")
    run = Running(loop, options(fake, tmp_path, interval=30), api)
    run.until(lambda: api.values("g1").get("vm.role") == "web", what="g1's keys")
    run.sleep(0.1)                                   # waiting for the next poll or a wake-up
    run.source.guests_changed()
    run.stop()
    assert run.task.cancelled()


def test_links_to_another_server_and_profiles(fake, loop, tmp_path):
    api = FakeAPI()
    api.link("g1", system="web1", server="http://other.example/cobbler_api", keys={"vm.role": "kept"})
    api.link("g2", profile="web")
    api.link("g3", system="web2", server=fake.url.replace("/cobbler_api", ""))   # same server, other spelling
    run = Running(loop, options(fake, tmp_path, aliases="other-name.example"), api)
    try:
        run.until(lambda: api.values("g2") == {"vm.tier": "front"}, what="the profile link")
        run.until(lambda: api.values("g3").get("vm.role") == "cache", what="g3")
        status = run.source.status()
        assert status["other_servers"] == {"dom-g1": "http://other.example/cobbler_api"}
        assert api.values("g1") == {"vm.role": "kept"}
    finally:
        run.stop()


def test_a_linked_system_that_is_gone_keeps_its_keys(fake, loop, tmp_path, caplog):
    api = FakeAPI()
    api.link("g1", system="nosuch", keys={"vm.role": "kept"})
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: run.source.status()["guests"].get("dom-g1", {}).get("problem"), what="problem")
        assert "Cobbler system nosuch not found" in run.source.status()["guests"]["dom-g1"]["problem"]
        assert api.values("g1") == {"vm.role": "kept"}
    finally:
        run.stop()


def test_failed_writes_are_retried_and_reported(fake, loop, tmp_path):
    api = FakeAPI()
    api.fail_writes = "libvirt: connection refused"
    api.link("g1", system="web1")
    run = Running(loop, options(fake, tmp_path), api)
    try:
        run.until(lambda: run.source.status()["guests"].get("dom-g1", {}).get("problem"), what="problem")
        assert run.source.status()["guests"]["dom-g1"]["pending_write"]
        api.fail_writes = None
        run.until(lambda: api.values("g1").get("vm.role") == "web", what="the retried write")
        run.until(lambda: not run.source.status()["guests"]["dom-g1"]["pending_write"], what="confirmed")
    finally:
        run.stop()


@pytest.mark.parametrize("items, message", [
    ([("server", "http://u:p@cobbler/", "f:2")], "f:2: server must not carry credentials"),
    ([("server", "ftp://cobbler", "f:2")], "f:2: server must be http"),
    ([("server", "c", "f:2"), ("interval", "0.05", "f:3")], "f:3: interval must be between 0.1 and 3600"),
    ([("server", "c", "f:2"), ("interval", "often", "f:3")], "f:3: interval must be a number"),
    ([("server", "c", "f:2"), ("sever", "x", "f:3")], "f:3: unknown option 'sever' in [cobbler]"),
    ([("server", "c", "f:2"), ("server", "d", "f:3")], "f:3: server is set twice (first at f:2)"),
    ([("interval", "5", "f:2")], "f:2: [cobbler] has no server"),
    ([("server", "c", "f:2"), ("cache", "relative.json", "f:3")], "f:3: cache must be an absolute path"),
])
def test_options_errors_name_the_line(items, message):
    with pytest.raises(ValueError) as exc:
        cobbler.parse_options(items)
    assert str(exc.value).startswith(message), str(exc.value)


def test_options_defaults_and_server_spellings():
    opts = cobbler.parse_options([("server", "cobbler.example.com", "f:2")])
    assert opts["server"] == "http://cobbler.example.com/cobbler_api"
    assert opts["interval"] == 5.0 and opts["host_system"] is None and opts["identity"] == opts["server"]
    assert cobbler.parse_options([("server", "", "f:2")]) is None          # an empty server: off
    assert cobbler.parse_options([("server", "https://c:8443", "f:2")])["server"] == "https://c:8443/cobbler_api"
    assert cobbler.parse_options([("server", "http://c:25151/", "f:2")])["server"] == "http://c:25151/"
    same = ["cobbler.example.com", "http://COBBLER.example.com:80/cobbler_api", "https://cobbler.example.com:443/cobbler_api/"]
    assert len(set(cobbler.server_key(s) for s in same)) == 1
    assert cobbler.server_key("cobbler.example.com:8080") != cobbler.server_key(same[0])
