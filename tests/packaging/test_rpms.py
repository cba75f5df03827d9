"""hostkv's RPMs, built by the real rpmbuild and installed by the real rpm into scratch roots.

Build once per module: release 1 through `make rpms`, release 2 from the same sources, release 3
from a copy whose shipped hostkvd.conf changed (for the .rpmnew case).  Nothing touches the
machine's own /usr, /etc or rpm database: installs go to `rpm --root <tmp>`, and the checks that
need host paths (systemd-analyze, udevadm test, a chroot with scriptlets) run in private mount
namespaces (`unshare -m`) with overlays.
"""
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from tests.harness import rpms as rpmh
from tests.harness.agent_payload import agent_payload_root
from tests.packaging.rpmtools import (clean_env, file_flags, file_list, parse_unit, py_files,
                                      requires, rpm_root, rpmq, run, scriptlets, unshare_sh)

REPO = rpmh.REPO
VERSION = rpmh.version()
AGENT_LIB = "/usr/lib/hostkv-agent"
HOST_LIB = "/usr/lib/hostkv-host"
CONF = "/etc/hostkv/hostkvd.conf"


# ----------------------------------------------------------------------------- fixtures

# rpm_home (autouse, module scope: a temp HOME for Debian's rpm) comes from conftest.py.

@pytest.fixture(scope="module")
def built(rpm_home, tmp_path_factory):
    """Release 1 built by `make rpms` into a temp dist dir."""
    dist = tmp_path_factory.mktemp("dist1")
    run(["make", "-s", "-C", str(REPO), "rpms", "DIST=%s" % dist, "RELEASE=1"], timeout=300)
    return rpmh.find_rpms(dist)


@pytest.fixture(scope="module")
def built_r2(rpm_home, tmp_path_factory):
    """Release 2 from the same sources (shipped config unchanged)."""
    return rpmh.build_rpms(tmp_path_factory.mktemp("dist2"), release="2")


@pytest.fixture(scope="module")
def built_r3(rpm_home, tmp_path_factory):
    """Release 3 from a copy of the sources whose shipped hostkvd.conf gained a line."""
    src = rpmh.copy_sources(tmp_path_factory.mktemp("src3"))
    conf = src / "packaging" / "config" / "hostkvd.conf"
    conf.write_text(conf.read_text() + "# new default comment in release 3\n")
    return rpmh.build_rpms(tmp_path_factory.mktemp("dist3"), release="3", srcdir=src)


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """A scratch root with both packages installed by rpm (scriptlets off: no shell in there)."""
    root = tmp_path_factory.mktemp("root")
    rpm_root(root, "--noscripts", "-i", str(built.agent), str(built.host))
    return root


# ----------------------------------------------------------------------------- build output

def test_license(built, tmp_path):
    """One licence, MIT (SPDX) in every header; the LICENSE file as %license."""
    for rpm in (built.agent, built.host, built.srpm):
        assert rpmq("-qp", "--qf", "%{LICENSE}", str(rpm)) == "MIT"
    root = rpmh.extract_payload(built.agent, tmp_path / "p")
    assert (root / "usr/share/licenses/hostkv-agent/LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")


def test_release_carries_the_dist_tag(tmp_path):
    """Release: N%{?dist}: N.el9 where the builder defines dist (EL), N where it does not (here)."""
    spec = tmp_path / "hostkv.spec"
    spec.write_text((REPO / "packaging/hostkv.spec.in").read_text()
                    .replace("@VERSION@", VERSION).replace("@RELEASE@", "4"))
    assert run(["rpmspec", "-q", "--srpm", "--qf", "%{RELEASE}\n", "--define", "dist .el9", str(spec)]) \
        .stdout.strip() == "4.el9"
    assert run(["rpmspec", "-q", "--srpm", "--qf", "%{RELEASE}\n", str(spec)]).stdout.strip() == "4"
    cob = tmp_path / "hostkv-cobbler.spec"
    cob.write_text((REPO / "packaging/hostkv-cobbler.spec.in").read_text()
                   .replace("@VERSION@", VERSION).replace("@RELEASE@", "4"))
    out = run(["rpmspec", "-P", "--define", "dist .el9", str(cob)]).stdout
    assert "hostkv-agent-%s-4.el9.noarch.rpm" % VERSION in out      # the agent RPM it ships
    assert re.search(r"^Release:\s+4\.el9$", out, re.M)


def test_make_rpms_names_and_versions(built):
    assert built.agent.name == "hostkv-agent-%s-1.noarch.rpm" % VERSION
    assert built.host.name == "hostkv-host-%s-1.noarch.rpm" % VERSION
    assert built.srpm.name == "hostkv-%s-1.src.rpm" % VERSION
    for rpm, name in ((built.agent, "hostkv-agent"), (built.host, "hostkv-host")):
        assert rpmq("-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", str(rpm)) \
            == "%s %s 1 noarch" % (name, VERSION)
    # gzip payload: readable by rpm on EL8 as well as EL9/EL10
    assert rpmq("-qp", "--qf", "%{PAYLOADCOMPRESSOR}", str(built.agent)) == "gzip"


def test_agent_file_list(built):
    files = file_list(built.agent)
    lib = {f for f in files if f.startswith(AGENT_LIB + "/")}
    expected_code = {"%s/hostkv/protocol.py" % AGENT_LIB} | {
        "%s/hostkv/agent/%s" % (AGENT_LIB, p) for p in py_files(REPO / "guest_agent/hostkv/agent")} | {
        "%s/hostkv/common/%s" % (AGENT_LIB, p) for p in py_files(REPO / "protocol/hostkv/common")}
    assert expected_code <= lib, "missing: %s" % sorted(expected_code - lib)
    assert {f for f in lib if f.endswith(".py")} == expected_code
    assert not any("site-packages" in f or "dist-packages" in f for f in files)
    assert "%s/hostkv/__init__.py" % AGENT_LIB not in files
    assert not any(f.endswith((".pyc", ".pyo")) or "__pycache__" in f for f in files)
    assert not any(f.startswith(HOST_LIB) or "hostkvd" in f for f in files)
    others = files - lib - {AGENT_LIB}
    assert others == {
        "/usr/bin/hostkv", "/usr/sbin/hostkv-agent",
        "/usr/lib/systemd/system/hostkv-agent.service",
        "/usr/lib/systemd/system-preset/90-hostkv-agent.preset",
        "/usr/lib/udev/rules.d/90-hostkv-agent.rules",
        "/usr/lib/tmpfiles.d/hostkv-agent.conf",
        "/etc/hostkv", "/etc/hostkv/hooks.d", "/var/lib/hostkv", "/run/hostkv",
        "/usr/share/man/man1/hostkv.1.gz", "/usr/share/man/man8/hostkv-agent.8.gz",
        "/usr/share/bash-completion/completions/hostkv",
        # user docs at the path the unit's Documentation= names (EL's unversioned doc dir)
        "/usr/share/doc/hostkv-agent",
        "/usr/share/doc/hostkv-agent/AGENT.md", "/usr/share/doc/hostkv-agent/TROUBLESHOOTING.md",
        "/usr/share/licenses/hostkv-agent", "/usr/share/licenses/hostkv-agent/LICENSE",
    }
    flags = file_flags(built.agent)
    assert "g" in flags["/run/hostkv"]          # %ghost: created by tmpfiles, not the payload
    assert "d" in flags["/usr/share/doc/hostkv-agent/AGENT.md"]
    assert "l" in flags["/usr/share/licenses/hostkv-agent/LICENSE"]      # %license


def test_host_file_list(built):
    files = file_list(built.host)
    lib = {f for f in files if f.startswith(HOST_LIB + "/")}
    expected_code = {"%s/hostkv/protocol.py" % HOST_LIB} | {
        "%s/hostkv/common/%s" % (HOST_LIB, p) for p in py_files(REPO / "protocol/hostkv/common")}
    for pkg in sorted((REPO / "host_service/hostkv").iterdir()):
        if pkg.is_dir() and pkg.name != "__pycache__":
            expected_code |= {"%s/hostkv/%s/%s" % (HOST_LIB, pkg.name, p) for p in py_files(pkg)}
    assert "%s/hostkv/hostkvd/__main__.py" % HOST_LIB in expected_code
    assert {f for f in lib if f.endswith(".py")} == expected_code
    assert not any("site-packages" in f or "dist-packages" in f for f in files)
    assert "%s/hostkv/__init__.py" % HOST_LIB not in files
    assert not any(f.endswith((".pyc", ".pyo")) or "__pycache__" in f for f in files)
    assert not any(f.startswith(AGENT_LIB) for f in files)
    assert {"/usr/sbin/hostkvd", "/usr/sbin/hostkvctl", "/usr/lib/systemd/system/hostkvd.service",
            "/usr/lib/systemd/system-preset/90-hostkvd.preset", CONF, "/etc/hostkv",
            "/usr/share/man/man8/hostkvd.8.gz", "/usr/share/man/man8/hostkvctl.8.gz",
            "/usr/share/man/man8/hostkv-koan.8.gz", "/usr/share/man/man5/hostkvd.conf.5.gz",
            "/usr/share/bash-completion/completions/hostkvctl",
            "/usr/share/doc/hostkv-host/HOSTKVCTL.md", "/usr/share/doc/hostkv-host/KOAN.md",
            "/usr/share/doc/hostkv-host/TROUBLESHOOTING.md",
            "/usr/share/licenses/hostkv-host/LICENSE"} <= files
    assert not any("README" in f for f in files)      # the packaging notes are not user docs
    assert file_flags(built.host)[CONF] == "cn"      # %config(noreplace)


def test_requires(built):
    def packages(rpm):
        return {r for r in requires(rpm) if not r.startswith(("rpmlib(", "/", "config("))}
    assert packages(built.agent) == {"python3"}
    assert packages(built.host) == {"python3", "python3-libvirt"}
    # file dependencies only on the interpreters (scriptlets, wrappers' shebang)
    for rpm in (built.agent, built.host):
        assert {r for r in requires(rpm) if r.startswith("/")} == {"/bin/sh", "/usr/bin/python3"}


def test_srpm_rebuilds_by_itself(built, tmp_path):
    """The SRPM carries a spec with literal version/release: `rpmbuild --rebuild` reproduces."""
    run(["rpmbuild", "--rebuild", "--quiet", "--define", "_topdir %s" % tmp_path, str(built.srpm)],
        timeout=300)
    rebuilt = sorted((tmp_path / "RPMS" / "noarch").glob("*.rpm"))
    assert [p.name for p in rebuilt] == sorted([built.agent.name, built.host.name])
    for new in rebuilt:
        old = built.agent if new.name == built.agent.name else built.host
        assert file_list(new) == file_list(old)


def test_version_comes_from_version_file(built):
    spec = rpmq("-qpl", str(built.srpm))
    assert "hostkv-%s.tar.gz" % VERSION in spec.split()


RPMLINT = str(REPO / ".venv" / "bin" / "rpmlint")


def test_rpmlint_is_clean(built):
    """rpmlint on all three RPMs (the SRPM's spec included), with the reasoned filters in
    packaging/rpmlint.toml: no errors, no warnings.  no-manual-page-for-binary is not filtered."""
    filters = (REPO / "packaging/rpmlint.toml").read_text()
    assert "no-manual-page-for-binary" not in filters
    proc = run([RPMLINT, "-c", str(REPO / "packaging/rpmlint.toml"),
                str(built.agent), str(built.host), str(built.srpm)], check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 errors, 0 warnings" in proc.stdout, proc.stdout


def test_rpmlint_sees_a_missing_man_page(built, tmp_path):
    """The check above can fail: a build whose spec drops hostkvctl's man page is reported."""
    src = rpmh.copy_sources(tmp_path / "src")
    spec = src / "packaging/hostkv.spec.in"
    spec.write_text(spec.read_text().replace("%{_mandir}/man8/hostkvctl.8*\n", "%exclude %{_mandir}/man8/hostkvctl.8*\n"))
    rpms = rpmh.build_rpms(tmp_path / "dist", srcdir=src)
    proc = run([RPMLINT, "-c", str(REPO / "packaging/rpmlint.toml"), str(rpms.host)], check=False, timeout=120)
    assert "hostkv-host.noarch: W: no-manual-page-for-binary hostkvctl" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- scriptlets

def test_agent_scriptlets(built):
    s = scriptlets(built.agent)
    post, preun, postun, posttrans = s["%post"], s["%preun"], s["%postun"], s["%posttrans"]
    assert "preset hostkv-agent.service" in post
    # enablement by the preset and the udev rule, never by systemctl enable/start (EL's way)
    code = "\n".join(l for l in post.splitlines() if not l.lstrip().startswith("#"))
    assert not re.search(r"systemctl (--\S+ )*(enable|start|restart)\b", code), post
    assert "systemd-tmpfiles --create /usr/lib/tmpfiles.d/hostkv-agent.conf" in post
    # the rule is loaded before the existing port is re-triggered (EL's %udev_rules_update is
    # a file trigger at the end of the transaction, too late for the trigger)
    assert re.search(r"udevadm control --reload[^\n]*\n\s*udevadm trigger --subsystem-match=virtio-ports "
                     r"--attr-match=name=org\.hostkv\.0 --action=add", post), post
    assert "disable --now hostkv-agent.service" in preun and "$1 -eq 0" in preun
    assert "try-restart hostkv-agent.service" in postun and "$1 -ge 1" in postun
    assert "compileall" in posttrans and AGENT_LIB in posttrans
    for name, body in s.items():       # every scriptlet is valid sh
        if body:
            run(["sh", "-n", "-c", body])


def test_host_scriptlets(built):
    s = scriptlets(built.host)
    assert "preset hostkvd.service" in s["%post"]
    assert "enable" not in s["%post"].replace("preset", "")   # the admin enables hostkvd
    assert "disable --now hostkvd.service" in s["%preun"]
    assert "try-restart hostkvd.service" in s["%postun"]
    assert "compileall" in s["%posttrans"] and HOST_LIB in s["%posttrans"]
    for body in s.values():
        if body:
            run(["sh", "-n", "-c", body])


def test_spec_prefers_the_distributions_systemd_macros(tmp_path):
    """On EL systemd-rpm-macros defines %systemd_post etc.; the spec's fallbacks must then step aside."""
    spec = tmp_path / "hostkv.spec"
    spec.write_text((REPO / "packaging/hostkv.spec.in").read_text()
                    .replace("@VERSION@", VERSION).replace("@RELEASE@", "1"))
    out = run(["rpmspec", "-P", str(spec),
               "--define", "systemd_post() DISTRO_POST %{?*}",
               "--define", "systemd_preun() DISTRO_PREUN %{?*}",
               "--define", "systemd_postun_with_restart() DISTRO_POSTUN %{?*}",
               "--define", "_unitdir /distro/units"]).stdout
    assert "DISTRO_POST hostkv-agent.service" in out and "DISTRO_POST hostkvd.service" in out
    assert "DISTRO_PREUN hostkv-agent.service" in out and "DISTRO_POSTUN hostkvd.service" in out
    assert "--no-reload preset" not in out                  # the fallback is gone
    assert "/distro/units/hostkv-agent.service" in out


# ----------------------------------------------------------------------------- units, udev, tmpfiles

def test_units_pass_systemd_analyze_verify(installed):
    """systemd-analyze verify against the host's unit set, with the scratch root's binaries
    overlaid onto /usr/sbin in a private mount namespace (ExecStart must exist and be executable)."""
    units = installed / "usr/lib/systemd/system"
    proc = unshare_sh(
        "mount -t overlay overlay -o lowerdir=%s:/usr/sbin /usr/sbin\n"
        "test -x /usr/sbin/hostkv-agent && test -x /usr/sbin/hostkvd\n"
        "exec systemd-analyze verify --man=no %s %s"
        % (installed / "usr/sbin", units / "hostkv-agent.service", units / "hostkvd.service"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # verify exits 0 on "Unknown key ..., ignoring": any diagnostic is a failure here
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""


def test_units_catch_a_broken_unit(installed, tmp_path):
    """The check above can fail: a typo in a copy of the unit is reported."""
    bad = tmp_path / "hostkv-agent.service"
    bad.write_text((installed / "usr/lib/systemd/system/hostkv-agent.service").read_text()
                   .replace("Restart=always", "Restart=alwayz"))
    proc = unshare_sh("mount -t overlay overlay -o lowerdir=%s:/usr/sbin /usr/sbin\n"
                      "exec systemd-analyze verify --man=no %s" % (installed / "usr/sbin", bad))
    assert "alwayz" in proc.stderr


def test_agent_unit_content(installed):
    u = parse_unit(installed / "usr/lib/systemd/system/hostkv-agent.service")
    assert u[("Service", "Type")] == ["notify"] and u[("Service", "NotifyAccess")] == ["main"]
    assert u[("Service", "Restart")] == ["always"]
    assert u[("Service", "ExecStart")] == ["/usr/sbin/hostkv-agent"]
    # hooks run as the agent's children and must be able to act like any root script
    assert ("Service", "ProtectSystem") not in u and ("Service", "NoNewPrivileges") not in u
    assert ("Service", "PrivateDevices") not in u      # it needs /dev/virtio-ports
    assert "PYTHONUNBUFFERED=1" in u[("Service", "Environment")]
    assert u[("Install", "WantedBy")] == ["multi-user.target"]


def test_host_unit_content(installed):
    u = parse_unit(installed / "usr/lib/systemd/system/hostkvd.service")
    # ordered after libvirt's sockets as libvirt-guests.service is (EL9's modular virtqemud and
    # EL8's monolithic libvirtd alike); wanting nothing (test_no_unit_pulls_in_a_libvirt_daemon)
    after = " ".join(u[("Unit", "After")]).split()
    assert {"libvirtd.socket", "virtqemud.socket", "network.target"} <= set(after), after
    assert ("Unit", "Wants") not in u
    assert u[("Service", "LimitNOFILE")] == ["65536"]       # one fd per served guest
    for hard in ("Requires", "Requisite", "BindsTo", "PartOf"):
        assert ("Unit", hard) not in u, "a broken libvirt must never block hostkvd"
    assert u[("Service", "Restart")] == ["on-failure"]
    assert u[("Service", "ExecReload")] == ["/usr/sbin/hostkvctl reload"]
    assert u[("Service", "Type")] == ["notify"] and u[("Service", "NotifyAccess")] == ["main"]
    assert u[("Service", "ExecStart")] == ["/usr/sbin/hostkvd"]
    assert "PYTHONUNBUFFERED=1" in u[("Service", "Environment")]
    assert u[("Install", "WantedBy")] == ["multi-user.target"]


# a libvirt daemon, monolithic or modular (virtqemud, virtproxyd, virtnetworkd, virtlogd ...),
# as a service or a socket
LIBVIRT_DAEMON = re.compile(r"^(libvirtd|virt[a-z]+d)([-@.].*)?$")
PULLING = ("Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "Requires.overridable")


def _all_units(installed):
    """Every unit the packages ship (installed tree) and every unit in the checkout."""
    units = sorted((installed / "usr/lib/systemd/system").iterdir())
    units += sorted((REPO / "packaging/systemd").glob("*.service"))
    units += sorted((REPO / "packaging/systemd").glob("*.socket")) + sorted((REPO / "packaging/systemd").glob("*.timer"))
    return units


def test_no_unit_pulls_in_a_libvirt_daemon(installed):
    """EL9/EL10's modular daemons declare Conflicts=libvirtd.service: a unit that wants (or
    requires, binds to ...) libvirtd would stop virtqemud.  Ordering (After=) is all that is allowed."""
    units = _all_units(installed)
    assert {u.name for u in units} >= {"hostkvd.service", "hostkv-agent.service"}
    for unit in units:
        for (section, key), values in parse_unit(unit).items():
            if key in PULLING:
                named = " ".join(values).split()
                assert not [n for n in named if LIBVIRT_DAEMON.match(n)], (unit, key, named)


def test_the_libvirt_daemon_check_can_fail():
    assert LIBVIRT_DAEMON.match("libvirtd.service") and LIBVIRT_DAEMON.match("virtqemud.socket")
    assert LIBVIRT_DAEMON.match("virtproxyd.service") and LIBVIRT_DAEMON.match("libvirtd-ro.socket")
    assert not LIBVIRT_DAEMON.match("network.target") and not LIBVIRT_DAEMON.match("virt-guest-shutdown.target")


def test_units_documentation_is_shipped(built, installed):
    """Every Documentation= of a unit names something its own package installs: a man page in
    its file list, or a file:// path in it (the user docs, not packaging notes)."""
    for rpm, unit in ((built.agent, "hostkv-agent.service"), (built.host, "hostkvd.service")):
        files = file_list(rpm)
        docs = " ".join(parse_unit(installed / "usr/lib/systemd/system" / unit)[("Unit", "Documentation")]).split()
        assert any(d.startswith("man:") for d in docs) and any(d.startswith("file://") for d in docs), docs
        for doc in docs:
            if doc.startswith("man:"):
                name, section = re.fullmatch(r"man:([\w.-]+)\((\d)\)", doc).groups()
                assert "/usr/share/man/man%s/%s.%s.gz" % (section, name, section) in files, doc
            else:
                assert doc.startswith("file:///") and doc[len("file://"):] in files, doc


def test_presets(installed):
    """The agent is enabled by preset; hostkvd disabled (nothing changes on a host unless asked)."""
    presets = installed / "usr/lib/systemd/system-preset"
    lines = {p.name: [l for l in p.read_text().splitlines() if l.strip() and not l.startswith("#")]
             for p in presets.iterdir()}
    assert lines == {"90-hostkv-agent.preset": ["enable hostkv-agent.service"],
                     "90-hostkvd.preset": ["disable hostkvd.service"]}


def test_udev_rule(installed, tmp_path):
    rule_file = installed / "usr/lib/udev/rules.d/90-hostkv-agent.rules"
    rules = [l for l in rule_file.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert len(rules) == 1
    pairs = [p.strip() for p in rules[0].split(",")]
    assert pairs == ['SUBSYSTEM=="virtio-ports"', 'ATTR{name}=="org.hostkv.0"', 'TAG+="systemd"',
                     'ENV{SYSTEMD_WANTS}+="hostkv-agent.service"']
    # Syntax check by udev itself (Debian 12's udevadm has no `verify`): `udevadm test` parses all
    # rules files and names the file and line of any bad one.  Private namespace: our rule alone in
    # /etc/udev/rules.d, a throwaway /run (udevadm test writes /run/udev/data).
    assert shutil.which("udevadm") and os.path.isdir("/etc/udev/rules.d"), \
        "udevadm and /etc/udev/rules.d come with Debian's udev package (scripts/apt-packages.txt): not installed"
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    shutil.copy2(str(rule_file), str(rules_dir))
    bad_dir = tmp_path / "bad.d"
    bad_dir.mkdir()
    (bad_dir / rule_file.name).write_text(rule_file.read_text().replace('TAG+="systemd"', 'TAG+="systemd" x'))
    for d, want_ok in ((rules_dir, True), (bad_dir, False)):
        proc = unshare_sh("mount -t tmpfs tmpfs /run\nmount --bind %s /etc/udev/rules.d\n"
                          "exec udevadm test /sys/class/net/lo" % d, timeout=60)
        ours = [l for l in (proc.stdout + proc.stderr).splitlines() if rule_file.name in l]
        assert ours and ours[0].startswith("Reading rules file"), proc.stdout + proc.stderr
        assert (ours[1:] == []) is want_ok, ours


def test_tmpfiles_creates_the_dirs(installed, tmp_path):
    """Real systemd-tmpfiles, applied to a temp root."""
    conf = installed / "usr/lib/tmpfiles.d/hostkv-agent.conf"
    run(["systemd-tmpfiles", "--create", "--root=%s" % tmp_path, str(conf)])
    for d in ("run/hostkv", "var/lib/hostkv"):
        st = (tmp_path / d).stat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0


# ----------------------------------------------------------------------------- installed code runs

@pytest.mark.parametrize("wrapper", ["usr/sbin/hostkvd", "usr/sbin/hostkvctl",
                                     "usr/bin/hostkv", "usr/sbin/hostkv-agent"])
def test_installed_wrapper_runs_from_its_private_lib(installed, wrapper, tmp_path):
    """`python3 <root>/<wrapper> --help` and direct exec, without PYTHONPATH, from an unrelated cwd:
    the code can only come from <root>/usr/lib/hostkv-*."""
    path = installed / wrapper
    assert os.access(str(path), os.X_OK)
    assert path.read_text().splitlines()[0] == "#!/usr/bin/python3 -s"
    for cmd in (["python3", str(path), "--help"], [str(path), "--help"]):
        proc = run(cmd, cwd=str(tmp_path), env=clean_env(), check=False, timeout=30)
        assert proc.returncode == 0, (
            "%s: rc %d\n%s%s\nThe contract (packaging/README.md): a wrapper installed as <root>/usr/[s]bin/X "
            "must find <root>/usr/lib/hostkv-*/ from its own real path, without PYTHONPATH or env vars."
            % (cmd, proc.returncode, proc.stdout, proc.stderr))
        assert "usage" in (proc.stdout + proc.stderr).lower()
        assert "__main__.py" not in proc.stdout


def test_installed_code_is_the_installed_copy(installed, tmp_path):
    """Every hostkv module the wrapper imports comes from the scratch root's private lib dir
    (PYTHONVERBOSE makes the interpreter name each file it imports)."""
    for wrapper, lib in (("usr/sbin/hostkvd", HOST_LIB), ("usr/sbin/hostkvctl", HOST_LIB),
                         ("usr/bin/hostkv", AGENT_LIB), ("usr/sbin/hostkv-agent", AGENT_LIB)):
        env = dict(clean_env(), PYTHONVERBOSE="1")
        proc = run([str(installed / wrapper), "--help"], cwd=str(tmp_path), env=env, check=False)
        loaded = set(re.findall(r"^# code object from '?([^'\s]+/hostkv/[^'\s]+)", proc.stderr, re.M))
        assert proc.returncode == 0 and loaded, proc.stderr[-2000:]
        assert all(p.startswith(str(installed) + lib + "/hostkv/") for p in loaded), sorted(loaded)


def test_shipped_config_is_valid_and_only_comments(installed):
    from hostkv.hostkvd import config
    text = (installed / CONF.lstrip("/")).read_text()
    cfg = config.parse(text, CONF)
    assert cfg.host_values == {} and cfg.host_id is None and cfg.publish_hostname is True
    assert all(not l.strip() or l.lstrip().startswith("#") for l in text.splitlines())


# ----------------------------------------------------------------------------- upgrades

EDIT = "[host]\nhost.rack = r12-admin-edit\n"


def _conf(root):
    return (root / CONF.lstrip("/")).read_text()


def test_edited_config_survives_upgrade_and_rpmnew(built, built_r2, built_r3, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    rpm_root(root, "--noscripts", "-i", str(built.host))
    shipped = _conf(root)
    (root / CONF.lstrip("/")).write_text(shipped + EDIT)

    # same shipped config in release 2: the admin's file stays, no .rpmnew
    rpm_root(root, "--noscripts", "-U", str(built_r2.host))
    assert rpm_root(root, "-q", "hostkv-host").stdout.strip() == "hostkv-host-%s-2.noarch" % VERSION
    assert _conf(root) == shipped + EDIT
    assert not (root / (CONF.lstrip("/") + ".rpmnew")).exists()

    # changed shipped config in release 3: the admin's file stays, the new default is .rpmnew
    proc = rpm_root(root, "--noscripts", "-U", str(built_r3.host))
    assert _conf(root) == shipped + EDIT
    rpmnew = root / (CONF.lstrip("/") + ".rpmnew")
    assert rpmnew.read_text() == shipped + "# new default comment in release 3\n"
    assert "created as %s.rpmnew" % CONF in proc.stdout + proc.stderr

    from hostkv.hostkvd import config
    assert config.parse(_conf(root), CONF).host_values == {"host.rack": "r12-admin-edit"}

    # erase keeps the edit as .rpmsave
    rpm_root(root, "--noscripts", "-e", "hostkv-host")
    assert (root / (CONF.lstrip("/") + ".rpmsave")).read_text() == shipped + EDIT
    assert not (root / CONF.lstrip("/")).exists()


def test_unedited_config_follows_upgrade(built, built_r3, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    rpm_root(root, "--noscripts", "-i", str(built.host))
    rpm_root(root, "--noscripts", "-U", str(built_r3.host))
    assert _conf(root).endswith("# new default comment in release 3\n")
    assert not (root / (CONF.lstrip("/") + ".rpmnew")).exists()


def test_scriptlets_run_for_real_in_a_chroot(built, built_r2, tmp_path):
    """Install/upgrade/erase hostkv-agent WITH scriptlets into an overlay of this machine's / (the
    chroot then has sh, systemctl, systemd-tmpfiles, python3); systemd does not run in it, so
    %post enables (offline symlink) without starting, and %posttrans byte-compiles."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    wants = "etc/systemd/system/multi-user.target.wants/hostkv-agent.service"
    pyc = "usr/lib/hostkv-agent/hostkv/__pycache__"
    rpmq = "rpm --root {m} --dbpath /var/lib/rpm-hostkv-test".format(m=merged)
    rpm = rpmq + " --nodeps"
    script = """
mount -t overlay overlay -o lowerdir=/,upperdir={u},workdir={w} {m}
mount --rbind /dev {m}/dev
mount -t proc proc {m}/proc
mount -t tmpfs tmpfs {m}/run
mount -t tmpfs tmpfs {m}/tmp
{rpm} -i {a1}
echo "installed: wants=$(readlink {m}/{wants}) pyc=$(ls {m}/{pyc} | grep -c 'protocol\\..*pyc') run=$(stat -c %a {m}/run/hostkv)"
{rpm} -U {a2}
echo "upgraded: $({rpmq} -q hostkv-agent) wants=$(readlink {m}/{wants}) pyc=$(ls {m}/{pyc} | grep -c 'protocol\\..*pyc')"
{rpm} -e hostkv-agent
echo "erased: wants=$(test -e {m}/{wants} && echo yes || echo no) lib=$(test -e {m}/usr/lib/hostkv-agent && echo yes || echo no)"
{rpm} -i {h1}
echo "host: hostkvd=$(ls {m}/etc/systemd/system/*/hostkvd.service 2>/dev/null | wc -l)"
""".format(u=upper, w=work, m=merged, rpm=rpm, rpmq=rpmq, a1=built.agent, a2=built_r2.agent, h1=built.host,
           wants=wants, pyc=pyc)
    proc = unshare_sh(script, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    unit = r"(/usr)?/lib/systemd/system/hostkv-agent\.service"   # Debian's systemctl says /lib
    assert re.fullmatch(r"installed: wants=%s pyc=1 run=755" % unit, lines[0]), proc.stdout
    assert re.fullmatch(r"upgraded: hostkv-agent-%s-2\.noarch wants=%s pyc=1" % (re.escape(VERSION), unit),
                        lines[1]), proc.stdout
    assert lines[2] == "erased: wants=no lib=no", proc.stdout
    # the agent was enabled by its preset (no systemctl enable in %post); hostkvd stays disabled
    # by its own preset even on Debian, whose default preset policy enables every unit
    assert lines[3] == "host: hostkvd=0", proc.stdout
    # the machine's own / was not touched (everything went to the overlay's upper dir)
    assert not Path("/usr/lib/hostkv-agent").exists() and not Path("/" + wants).exists()
    assert (upper / "usr/lib/hostkv-agent").exists() is False


# ----------------------------------------------------------------------------- harness

def test_agent_payload_root(built):
    root = agent_payload_root(built.agent.parent)
    for rel in ("usr/sbin/hostkv-agent", "usr/bin/hostkv", "usr/lib/hostkv-agent/hostkv/protocol.py",
                "usr/lib/systemd/system/hostkv-agent.service", "usr/lib/udev/rules.d/90-hostkv-agent.rules",
                "usr/lib/tmpfiles.d/hostkv-agent.conf", "etc/hostkv/hooks.d", "var/lib/hostkv"):
        assert (root / rel).exists(), rel
    assert os.access(str(root / "usr/sbin/hostkv-agent"), os.X_OK)
    assert not (root / "usr/lib/hostkv-agent/hostkv/__init__.py").exists()
    assert agent_payload_root(built.agent.parent) == root        # cached


def test_agent_payload_root_builds_from_the_checkout():
    root = agent_payload_root()
    assert root.parent == REPO / "build" / "agent-payload"
    shipped = py_files(root / "usr/lib/hostkv-agent/hostkv/agent")
    assert shipped == py_files(REPO / "guest_agent/hostkv/agent")
    assert (root / "usr/lib/hostkv-agent/hostkv/protocol.py").read_bytes() \
        == (REPO / "protocol/hostkv/protocol.py").read_bytes()


def test_guest_code_parses_as_python36(built, tmp_path):
    """What ships to EL8 guests must be Python 3.6 syntax (ast's feature_version is best effort:
    it catches e.g. walrus and positional-only parameters, not every newer construct)."""
    import ast
    root = rpmh.extract_payload(built.agent, tmp_path / "payload")
    files = sorted((root / "usr/lib/hostkv-agent").rglob("*.py")) + [root / "usr/bin/hostkv",
                                                                       root / "usr/sbin/hostkv-agent"]
    for f in files:
        ast.parse(f.read_text(), str(f), feature_version=(3, 6))


@pytest.mark.parametrize("args, message", [
    (["--release", "1 2"], "is not a release"),
    (["--bogus"], "unknown argument: --bogus"),
    (["--srcdir", "/nonexistent-hostkv"], "nonexistent-hostkv"),
])
def test_build_script_refuses_bad_input(args, message, tmp_path):
    proc = run(["bash", str(rpmh.BUILD_SCRIPT), "--dist", str(tmp_path)] + args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def _build_with_version_file(tmp_path, text):
    """build-rpms.sh on the checkout's sources with VERSION replaced by ``text``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in rpmh.PACKAGED_PATHS[1:]:
        (src / name).symlink_to(REPO / name)
    (src / "VERSION").write_text(text)
    return run(["bash", str(rpmh.BUILD_SCRIPT), "--srcdir", str(src), "--dist", str(tmp_path / "d")],
               check=False)


def test_build_script_refuses_a_version_the_code_does_not_report(tmp_path):
    """One version source: VERSION and hostkv.common.version must agree, or nothing is built."""
    proc = _build_with_version_file(tmp_path, "9.9.9\n")
    assert proc.returncode != 0 and 'protocol/hostkv/common/version.py does not say VERSION = "9.9.9"' \
        in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()


def test_build_script_names_a_bad_version_file(tmp_path):
    proc = _build_with_version_file(tmp_path, "0.1.0-beta\n")
    assert proc.returncode != 0 and "VERSION: '0.1.0-beta' is not a version" in proc.stderr
