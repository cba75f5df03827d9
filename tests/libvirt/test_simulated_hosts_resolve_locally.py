"""Simulated hosts resolve their own names locally: tests send no DNS query off the machine.

Each namespace that plays a host has a private /etc/hosts naming it (tests/harness/etc_hosts.py).
The lookups below run inside that host's namespaces plus a fresh network namespace with no
interface up, so no resolver is reachable: they can only succeed from the host's own files.
The same lookup from the machine's own /etc/hosts fails (the control that shows this test can fail).
"""

import ipaddress
import subprocess

from tests.harness import libvirt_hosts as lh
from tests.harness.hostkvd_proc import uts_prefix

NO_NETWORK = ["unshare", "--net", "--"]
RESOLVE_PY = ("import socket, sys; name = sys.argv[1]; "
              "print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo(name, None)}))); "
              "print(socket.getfqdn(name))")


def _addresses(getent_stdout):
    return {line.split()[0] for line in getent_stdout.splitlines() if line.strip()}


def _assert_resolves_locally(run, name):
    res = run(NO_NETWORK + ["getent", "ahosts", name])
    assert res.returncode == 0, res
    addrs = _addresses(res.stdout)
    assert addrs and all(ipaddress.ip_address(a).is_loopback for a in addrs), res.stdout
    res = run(NO_NETWORK + [lh.PYTHON, "-c", RESOLVE_PY, name])
    assert res.returncode == 0, res
    py_addrs, fqdn = res.stdout.split("\n")[:2]
    assert set(py_addrs.split()) == addrs and fqdn == name, res.stdout
    res = run(["cat", "/etc/hosts"])
    listed = _addresses(res.stdout)
    assert all(ipaddress.ip_address(a).is_loopback for a in listed), res.stdout   # nothing outward


def _machine_does_not_know(name):
    res = subprocess.run(NO_NETWORK + ["getent", "hosts", name], capture_output=True, text=True)
    assert res.returncode == 2, res            # 2: not found (only a DNS server could answer it)


def test_libvirt_hosts_resolve_their_own_names_locally(lv_hosts):
    for host in lv_hosts.values():
        _machine_does_not_know(host.hostname)

        def run(argv, host=host):
            return host.run_in_ns(argv, capture_output=True, text=True, timeout=30)
        _assert_resolves_locally(run, host.hostname)
        assert run(["hostname"]).stdout.strip() == host.hostname
        assert host.conn.getHostname() == host.hostname      # libvirtd's own getaddrinfo() lookup


def test_hostkvd_uts_host_resolves_its_own_name_locally():
    """The hosts of the demo and the core tests: hostkvd under hostkvd_proc.uts_prefix()."""
    for name in ("kvm-host-a.example.org", "hostkv-core-x"):
        _machine_does_not_know(name)

        def run(argv, name=name):
            return subprocess.run(uts_prefix(name) + list(argv), capture_output=True, text=True, timeout=30)
        _assert_resolves_locally(run, name)
        if "." in name:
            short = name.split(".")[0]
            assert _addresses(run(NO_NETWORK + ["getent", "hosts", short]).stdout) == {"127.0.1.1"}
