"""`systemctl reboot` inside the real-OS guest: the cache comes back stale first, fresh once the
host answers, and nothing is ever half-written.

To SEE the early-boot state (not race it), the host's hostkvd is stopped across the reboot: the
guest then boots with nobody answering on the channel, exactly what it sees early in any boot.
"""
import json

import pytest

from tests.harness import libvirt_hosts as lh
from tests.real_os.conftest import HOSTKVD_CONFIG

pytestmark = [pytest.mark.real_os, pytest.mark.libvirt, pytest.mark.vm]

CHECK_TREE = r"""
set -e
cd /run/hostkv
cur=$(readlink current)
test -f "$cur/values.json" && test -f "$cur/env" && test -d "$cur/keys"
cmp values.json "$cur/values.json"
for d in snapshots/*; do
    [ -z "$(ls -A "$d")" ] && continue          # the one empty dir made ahead for the next seq
    test -f "$d/values.json" && test -f "$d/env" && test -d "$d/keys"
done
! find /run/hostkv /var/lib/hostkv -name '*.tmp*' | grep .
python3 -c 'import json; print(json.dumps(json.load(open("/var/lib/hostkv/snapshot.json"))))'
"""


def test_reboot_publishes_cache_stale_then_fresh_nothing_half_written(realos_hosts, realos_guests):
    a = realos_hosts["a"]
    g = realos_guests.start(a, "ro-reboot", metadata_values={"vm.role": "before-reboot"})
    g.wait_booted()
    g.wait_key("vm.role", "before-reboot", timeout=60)
    before = g.published()
    assert before["stale"] is False
    boot_id = g.boot_id()

    a.hostkvds[-1].stop()
    try:
        g.reboot()
        lh.wait_for(lambda: g.exec.ping(3.0) and g.boot_id() != boot_id, 300, interval=1.0,
                    what="the guest to come back from the reboot")
        g.wait_booted()
        early = lh.wait_for(g.published, 60, what="the agent to publish after the reboot")
        assert early["stale"] is True and early["connected"] is False, early
        assert early["values"] == before["values"] and early["seq"] == before["seq"], (early, before)
        assert early["host_id"] == before["host_id"]
        lines = g.journal("hostkv-agent")
        assert any("restored seq %d" % before["seq"] in m and "published as stale" in m
                   for _p, m in lines), lines
        tree = g.sh(CHECK_TREE)
        assert tree["rc"] == 0, tree
        cache = json.loads(tree["stdout"].strip().splitlines()[-1])
        assert cache["values"] == before["values"] and cache["seq"] == before["seq"]
    finally:
        a.start_hostkvd(HOSTKVD_CONFIG % "a")
    lh.wait_for(lambda: g.published()["stale"] is False, 60, what="fresh values after the reboot")
    after = g.published()
    assert after["connected"] is True and after["values"] == before["values"]
    assert after["seq"] == before["seq"]          # the same data keeps its seq across the reboot
    assert g.sh(CHECK_TREE)["rc"] == 0
    assert g.as_user("hostkv get vm.role")["stdout"].strip() == "before-reboot"
