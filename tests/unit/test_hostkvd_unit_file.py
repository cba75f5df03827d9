"""packaging/systemd/hostkvd.service, parsed (fast; the RPM-installed copy is checked by
tests/packaging/test_rpms.py and `systemd-analyze verify`)."""
from pathlib import Path

from tests.packaging.rpmtools import parse_unit

UNIT = Path(__file__).resolve().parents[2] / "packaging/systemd/hostkvd.service"


def test_reload_reports_a_refused_config():
    """`systemctl reload hostkvd` runs hostkvctl reload, which exits 1 when hostkvd refuses the
    config (tests/unit/test_hostkvd_daemon.py shows that exit code with the real daemon)."""
    u = parse_unit(UNIT)
    assert u[("Service", "ExecReload")] == ["/usr/sbin/hostkvctl reload"]


def test_notify_type_readiness_from_the_main_process():
    u = parse_unit(UNIT)
    assert u[("Service", "Type")] == ["notify"]
    assert u[("Service", "NotifyAccess")] == ["main"]
