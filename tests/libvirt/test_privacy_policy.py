"""Per-guest privacy policy (issue 12 item 11) across a live migration between two real libvirtds.

Three guests on host A, one per policy, set live with ``hostkvctl vm policy`` (so it is in the
domain metadata), then all three live-migrated to host B, whose hostkvd must apply the policy it
finds in the arriving domain's metadata before its first push:

  all     host.hostname / host.rack of the host it runs on; host id = libvirt's host UUID.
  opaque  no host.hostname / host.fqdn; host.id = an opaque per-host id (= the snapshot's host
          id), the same for every opaque guest of a host, another one on B; host.rack still given.
  none    no host.* key at all; an opaque host id per host and guest.
"""
import uuid

import pytest

from tests.harness import libvirt_hosts as lh
from tests.libvirt.helpers import channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]

IDENTITY = ("host.hostname", "host.fqdn")


def host_keys(guest):
    published = guest.published()
    assert published is not None, "guest %s published nothing" % guest.name
    return dict((k, v) for k, v in published["values"].items() if k.startswith("host.")), published["host_id"]


def check(guests, host, ids):
    """The three guests on ``host``: what each may see, and nothing more.  Returns the opaque ids."""
    g_all, g_opaque, g_none = guests
    keys, hid = host_keys(g_all)
    assert keys["host.hostname"] == host.hostname and keys["host.rack"] == "r" + host.name, keys
    assert hid == host.host_uuid

    keys, hid = host_keys(g_opaque)
    assert not set(IDENTITY) & set(keys), keys
    assert keys["host.rack"] == "r" + host.name, keys          # what the admin chose to publish
    assert keys["host.id"] == hid and uuid.UUID(hid) and hid != host.host_uuid, (keys, hid)
    assert host.hostname not in "".join(keys.values()) and host.host_uuid not in "".join(keys.values())

    keys, none_hid = host_keys(g_none)
    assert keys == {}, keys
    assert none_hid not in (host.host_uuid, hid)                # not even co-location shows
    assert hid not in ids and none_hid not in ids               # a new host: new opaque ids
    status = dict((label, ch) for label, ch in channels(host).items())
    for g, pol in zip(guests, ("all", "opaque", "none")):
        assert (status[g.name]["policy"], status[g.name]["policy_from"]) == (pol, "domain"), status[g.name]
    return hid, none_hid


def test_policy_travels_with_the_guest_and_each_host_applies_it(lv_hosts, guests):
    a, b = lv_hosts["a"], lv_hosts["b"]
    trio = [guests.start(a, name, persistent=False) for name in ("pv-all", "pv-opaque", "pv-none")]
    for g in trio:
        g.wait_booted()
        g.wait_key("host.hostname", a.hostname, timeout=20)      # the host default (all) to begin with
    for g, pol in zip(trio[1:], ("opaque", "none")):
        res = a.hostkvctl(["vm", "policy", g.name, pol], check=True)
        assert "policy %s" % pol in res.stdout, res.stdout
    for g in trio[1:]:
        g.wait_key("host.hostname", None, timeout=10)            # applied live: the name is withdrawn
    a.hostkvctl(["vm", "policy", "pv-all", "all"], check=True)   # explicit, so it travels too
    lh.wait_for(lambda: channels(a)["pv-all"]["policy_from"] == "domain", 10, what="pv-all's policy")
    ids_a = check(trio, a, ())
    text = a.hostkvctl(["status"], check=True).stdout
    assert "policy opaque" in text and "policy none" in text, text

    for g in trio:
        lh.migrate(g.dom(), b.conn)
        g.host = b
    trio[0].wait_key("host.hostname", b.hostname, timeout=15)
    lh.wait_for(lambda: trio[1].published()["host_id"] not in ids_a, 15, what="pv-opaque to get B's id")
    lh.wait_for(lambda: trio[2].published()["host_id"] not in ids_a, 15, what="pv-none to get B's id")
    check(trio, b, ids_a)
    # the policy is in the metadata the guest carried: B reads it back, nothing was set on B
    for g, pol in zip(trio, ("all", "opaque", "none")):
        shown = b.hostkvctl(["vm", "policy", g.name], check=True).stdout
        assert shown.strip() == "%s: policy %s" % (g.name, pol), shown
