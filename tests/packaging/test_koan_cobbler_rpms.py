"""hostkv-koan (in hostkv-host) and the hostkv-cobbler RPM: built by the real rpmbuild, installed
by the real rpm into scratch roots, and the INSTALLED commands run for real:

* ``<root>/usr/sbin/hostkv-koan`` against the project venv's koan 3.0.1 (status, read only) and a
  throw-away venv's copy of it (install/status/uninstall, tests/koan/koan_env.py);
* ``<root>/usr/sbin/hostkv-cobbler`` against a scratch Cobbler layout (``--root``,
  ``--cobbler-dir``), with markers added to the installed tree to prove that copy is the source;
* the scriptlets, in a private mount namespace over an overlay of this machine's / where the
  system python3 sees the project venv's koan and Cobbler (so the real scriptlet commands act on
  a real koan and a real Cobbler package dir; everything lands in the overlay's upper dir).
"""
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.harness import rpms as rpmh
from tests.koan.koan_env import KoanEnv
from tests.packaging.rpmtools import (build, clean_env, file_flags, file_list, py_files, requires,
                                      rpm_root, rpmq, run, scriptlets, unshare_sh)

REPO = rpmh.REPO
VERSION = rpmh.version()
VENV_PY = str(REPO / ".venv" / "bin" / "python")
HOST_LIB = "/usr/lib/hostkv-host"
KOAN_LIB = "/usr/lib/hostkv-koan"
SHARE = "/usr/share/hostkv-cobbler"
RPM_DIR = "/usr/share/hostkv/rpms"
COBBLER_CONF = "/etc/hostkv/cobbler.conf"
MANIFEST = "/var/lib/hostkv-cobbler/manifest.json"
R2_MARKER = "## hostkv-cobbler release 2 marker\n"

def venv_site():
    sites = sorted((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    assert len(sites) == 1 and (sites[0] / "koan").is_dir(), "koan missing in .venv: run scripts/setup.sh"
    return sites[0]


def tree_digests(top):
    """{relative path: sha256 or 'dir'} of everything under ``top`` (nothing if it is absent)."""
    top, out = Path(top), {}
    for p in sorted(top.rglob("*")) if top.exists() else []:
        out[p.relative_to(top).as_posix()] = ("dir" if p.is_dir() else
                                              hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def built(rpm_home, tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist1"), "1")


@pytest.fixture(scope="module")
def built_r2(rpm_home, tmp_path_factory):
    """Release 2 from a copy of the sources whose sample kickstart gained a (Cheetah comment) line."""
    src = rpmh.copy_sources(tmp_path_factory.mktemp("src2"))
    ks = src / "kickstart_snippets" / "sample_hostkv.ks"
    ks.write_text(ks.read_text() + R2_MARKER)
    return build(tmp_path_factory.mktemp("dist2"), "2", srcdir=src)


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """A scratch root with hostkv-host and hostkv-cobbler installed by rpm (no scriptlets)."""
    root = tmp_path_factory.mktemp("root")
    rpm_root(root, "--noscripts", "-i", str(built.host), str(built.cobbler))
    return root


# ----------------------------------------------------------------------------- hostkv-koan in hostkv-host

def test_host_package_ships_hostkv_koan(built):
    files = file_list(built.host)
    koan = {f for f in files if f.startswith(KOAN_LIB + "/")}
    expected = {"%s/hostkv_koan/%s" % (KOAN_LIB, p) for p in py_files(REPO / "koan_patch/hostkv_koan")}
    assert "%s/hostkv_koan/installer.py" % KOAN_LIB in expected
    assert koan == expected | {KOAN_LIB + "/hostkv_koan"}
    assert {KOAN_LIB, "/usr/sbin/hostkv-koan"} <= files
    # nothing is hooked into any koan by the package itself: no .pth, nothing in site-packages
    assert not any(f.endswith(".pth") or "site-packages" in f or "dist-packages" in f for f in files)
    assert not any(f.endswith((".pyc", ".pyo")) or "__pycache__" in f for f in files)


def test_host_scriptlets_for_hostkv_koan(built):
    s = scriptlets(built.host)
    # erase only ($1 == 0 in %preun; an upgrade has $1 >= 1), best effort, quiet
    assert re.search(r"if \[ \$1 -eq 0 \] && \[ -x /usr/sbin/hostkv-koan \]; then\n(\s*#.*\n)*"
                     r"\s*/usr/sbin/hostkv-koan uninstall >/dev/null 2>&1 \|\| :\nfi", s["%preun"]), s["%preun"]
    assert "disable --now hostkvd.service" in s["%preun"]
    for name, body in s.items():          # never hooked in without the admin asking
        code = [l for l in body.splitlines() if not l.lstrip().startswith("#")]
        assert not any("hostkv-koan install" in l for l in code), name
    assert "compileall" in s["%posttrans"] and KOAN_LIB in s["%posttrans"]
    assert re.search(r"\$1 -eq 0.*\n\s*rm -rf /usr/lib/hostkv-host /usr/lib/hostkv-koan\n", s["%postun"])


def test_installed_hostkv_koan_help_and_status(installed, tmp_path):
    """The installed wrapper, from an unrelated cwd, without PYTHONPATH: --help, and `status` of the
    project venv's koan (read only: that venv must stay untouched)."""
    hk = installed / "usr/sbin/hostkv-koan"
    assert hk.read_text().splitlines()[0] == "#!/usr/bin/python3 -s" and os.access(str(hk), os.X_OK)
    proc = run([str(hk), "--help"], cwd=str(tmp_path), env=clean_env())
    assert proc.stdout.startswith("usage: hostkv-koan")

    pth = venv_site() / "hostkv_koan.pth"
    assert not pth.exists()
    proc = run([str(hk), "--python", VENV_PY, "status", "--json"], cwd=str(tmp_path), env=clean_env(),
               check=False, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr          # 3: not installed
    st = json.loads(proc.stdout)
    assert st["installed"] is False and st["koan_version"] == "3.0.1" and st["supported"] is True
    assert st["code_dir"] == str(installed) + KOAN_LIB              # the installed copy, not the checkout
    assert st["pth"] == str(pth) and not pth.exists()

    env = dict(clean_env(), PYTHONVERBOSE="1")
    proc = run([str(hk), "--help"], cwd=str(tmp_path), env=env)
    loaded = set(re.findall(r"^# code object from '?([^'\s]+/hostkv_koan/[^'\s]+)", proc.stderr, re.M))
    assert loaded and all(p.startswith(str(installed) + KOAN_LIB + "/hostkv_koan/") for p in loaded), loaded


def test_installed_hostkv_koan_hooks_a_koan_with_the_installed_host_libs(installed, tmp_path):
    """install/status/uninstall on a throw-away koan 3.0.1 venv: the .pth names the installed code
    and, without --lib, the installed <root>/usr/lib/hostkv-host; koan then really gets them."""
    env = KoanEnv.create(str(tmp_path / "venv"))
    before = env.manifest()
    hk = str(installed / "usr/sbin/hostkv-koan")
    code, host_lib = str(installed) + KOAN_LIB, str(installed) + HOST_LIB

    proc = run([hk, "--python", env.python, "install"], cwd=str(tmp_path), env=clean_env())
    pth = os.path.join(env.site, "hostkv_koan.pth")
    assert proc.stdout.strip() == "installed %s" % pth
    text = Path(pth).read_text()
    assert "p = %r" % code in text and "activate(%r" % [host_lib] in text, text

    proc = run([hk, "--python", env.python, "status", "--json"], cwd=str(tmp_path), env=clean_env(),
               timeout=120)
    st = json.loads(proc.stdout)
    assert st["installed"] and st["active"] and st["code_dir"] == code
    assert st["wrapped"] and set(st["wrapped"].values()) == {"wrapped"}, st["wrapped"]

    probe = ("import koan.app, koan.virtinstall, koan.qcreate, hostkv.protocol, hostkv_koan.hook\n"
             "print('PROBE', hostkv.protocol.__file__, hostkv_koan.hook.__file__)")
    proc = run([env.python, "-c", probe], cwd="/", env=clean_env(), timeout=120)
    found = [l.split()[1:] for l in proc.stdout.splitlines() if l.startswith("PROBE ")]   # koan prints too
    assert found == [[host_lib + "/hostkv/protocol.py", code + "/hostkv_koan/hook.py"]], proc.stdout

    proc = run([hk, "--python", env.python, "uninstall"], cwd=str(tmp_path), env=clean_env())
    assert proc.stdout.strip() == "removed %s" % pth
    assert env.manifest() == before


# ----------------------------------------------------------------------------- hostkv-cobbler

def test_cobbler_package_name_and_files(built):
    assert built.cobbler.name == "hostkv-cobbler-%s-1.noarch.rpm" % VERSION
    assert built.cobbler_srpm.name == "hostkv-cobbler-%s-1.src.rpm" % VERSION
    assert rpmq("-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{PAYLOADCOMPRESSOR}",
                str(built.cobbler)) == "hostkv-cobbler %s 1 noarch gzip" % VERSION
    files = file_list(built.cobbler)
    share = {f for f in files if f.startswith(SHARE + "/")}
    expected = {SHARE + "/hostkv_cobbler.py",
                SHARE + "/kickstart_snippets/hostkv_agent", SHARE + "/kickstart_snippets/sample_hostkv.ks"}
    expected |= {"%s/protocol/hostkv/common/%s" % (SHARE, p) for p in py_files(REPO / "protocol/hostkv/common")}
    expected |= {"%s/modules/hostkv/%s" % (SHARE, p) for p in py_files(REPO / "cobbler_plugin/modules/hostkv")}
    assert SHARE + "/modules/hostkv/sync_post_publish.py" in expected
    assert expected <= share, sorted(expected - share)
    dirs = share - expected
    assert all(any(f.startswith(d + "/") for f in expected) for d in dirs), sorted(dirs)   # only parents
    agent_rpm = "%s/%s" % (RPM_DIR, built.agent.name)
    assert files - share == {
        SHARE, "/usr/sbin/hostkv-cobbler", "/etc/hostkv", COBBLER_CONF,
        "/usr/share/hostkv", RPM_DIR, agent_rpm, "/usr/share/man/man8/hostkv-cobbler.8.gz",
        "/usr/share/doc/hostkv-cobbler", "/usr/share/doc/hostkv-cobbler/COBBLER.md",
        "/usr/share/doc/hostkv-cobbler/TROUBLESHOOTING.md",
        "/usr/share/licenses/hostkv-cobbler", "/usr/share/licenses/hostkv-cobbler/LICENSE",
    }
    assert not any(f.endswith((".pyc", ".pyo")) or "__pycache__" in f for f in files)
    flags = file_flags(built.cobbler)
    assert flags[COBBLER_CONF] == "cn" and flags[agent_rpm] == ""     # %config(noreplace); plain file
    modes = dict(l.split(" ", 1)[::-1] for l in
                 rpmq("-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", str(built.cobbler)).splitlines())
    assert modes["/usr/sbin/hostkv-cobbler"] == "-rwxr-xr-x" and modes[agent_rpm] == "-rw-r--r--"


def test_cobbler_package_ships_the_agent_rpm_of_the_same_build(built, tmp_path):
    root = rpmh.extract_payload(built.cobbler, tmp_path / "payload")
    shipped = root / RPM_DIR.lstrip("/") / built.agent.name
    assert shipped.read_bytes() == built.agent.read_bytes()
    assert sorted(p.name for p in shipped.parent.iterdir()) == [built.agent.name]


def test_cobbler_requires(built):
    reqs = requires(built.cobbler)
    assert {r for r in reqs if not r.startswith(("rpmlib(", "/", "config("))} == {"cobbler >= 3.3",
                                                                                "createrepo_c"}
    assert {r for r in reqs if r.startswith("/")} == {"/bin/sh"}         # the sh wrapper, scriptlets


def test_cobbler_scriptlets(built):
    s = scriptlets(built.cobbler)
    assert s["%post"] == "" and s["%pre"] == "" and s["%postun"] == ""    # install changes nothing
    assert re.search(r"if \[ \$1 -eq 0 \] && \[ -f %s \] && \[ -x /usr/sbin/hostkv-cobbler \]; then\n"
                     r"(\s*#.*\n)*\s*/usr/sbin/hostkv-cobbler uninstall >/dev/null 2>&1 \|\| :\nfi"
                     % re.escape(MANIFEST), s["%preun"]), s["%preun"]
    assert re.search(r"if \[ -f %s \]; then\n(\s*#.*\n)*\s*/usr/sbin/hostkv-cobbler install "
                     % re.escape(MANIFEST), s["%posttrans"]), s["%posttrans"]
    # its report (an edit kept, the new version beside it) reaches the admin: not thrown away
    assert "/dev/null" not in s["%posttrans"], s["%posttrans"]
    for body in s.values():
        if body:
            run(["sh", "-n", "-c", body])


def test_cobbler_srpm_rebuilds_by_itself(built, tmp_path):
    """The SRPM carries the agent RPM as Source1: `rpmbuild --rebuild` reproduces the package."""
    assert set(rpmq("-qpl", str(built.cobbler_srpm)).split()) == {
        "hostkv-%s.tar.gz" % VERSION, built.agent.name, "hostkv-cobbler.spec"}
    run(["rpmbuild", "--rebuild", "--quiet", "--define", "_topdir %s" % tmp_path,
         "--define", "_binary_payload w9.gzdio", str(built.cobbler_srpm)], timeout=300)
    rebuilt = sorted((tmp_path / "RPMS" / "noarch").glob("*.rpm"))
    assert [p.name for p in rebuilt] == [built.cobbler.name]
    digests = "[%{FILENAMES} %{FILEDIGESTS} %{FILEMODES}\n]"
    assert rpmq("-qp", "--qf", digests, str(rebuilt[0])) == rpmq("-qp", "--qf", digests, str(built.cobbler))


def test_cobbler_rpmlint_is_clean(built):
    """Separate from test_rpms' run: rpmlint 2.4 given two SRPMs at once reports a bogus
    multiple-specfiles (it mixes their spec names); each SRPM alone is clean."""
    proc = run([str(REPO / ".venv/bin/rpmlint"), "-c", str(REPO / "packaging/rpmlint.toml"), str(built.cobbler),
                str(built.cobbler_srpm)], check=False, timeout=120)
    assert proc.returncode == 0 and "0 errors, 0 warnings" in proc.stdout, proc.stdout + proc.stderr


def test_shipped_cobbler_conf_documents_the_defaults(installed):
    """Only comments (so the plugin's defaults apply), and its commented-out lines ARE those
    defaults, parsed by the installed plugin's own config module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "hostkv_cobbler_installed_config", str(installed / SHARE.lstrip("/") / "modules/hostkv/_lib/config.py"))
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    text = (installed / COBBLER_CONF.lstrip("/")).read_text()
    assert all(not l.strip() or l.startswith("#") for l in text.splitlines())
    assert config.parse(text, COBBLER_CONF) == config.DEFAULTS
    settings = [l[2:] for l in text.splitlines() if re.match(r"# \w+ = ", l)]
    assert len(settings) == len(config.DEFAULTS)
    assert config.parse("\n".join(settings), COBBLER_CONF) == config.DEFAULTS


COBBLER_DIR = "/usr/lib/python3.11/site-packages/cobbler"     # inside the scratch Cobbler root


def scratch_cobbler(top):
    """A scratch Cobbler layout under ``top``: settings.yaml, snippet/template dirs holding
    Cobbler's own files, a package dir with a modules/ dir.  Returns ``top``."""
    (top / "etc/cobbler").mkdir(parents=True)
    (top / "etc/cobbler/settings.yaml").write_text(
        "autoinstall_snippets_dir: /var/lib/cobbler/snippets\n"
        "autoinstall_templates_dir: /var/lib/cobbler/templates\n"
        "include: [ \"/etc/cobbler/settings.d/*.settings\" ]\n")
    for d, name in (("var/lib/cobbler/snippets", "log_ks_pre"), ("var/lib/cobbler/templates", "sample.ks"),
                    (COBBLER_DIR.lstrip("/") + "/modules", "scm_track.py")):
        (top / d).mkdir(parents=True)
        (top / d / name).write_text("# Cobbler's own %s\n" % name)
    return top


def test_installed_hostkv_cobbler_against_a_scratch_cobbler(built, tmp_path):
    """install / status / uninstall by <root>/usr/sbin/hostkv-cobbler, with markers added to the
    installed tree first: what lands in Cobbler is the installed copy, byte for byte."""
    root = tmp_path / "root"
    root.mkdir()
    rpm_root(root, "--noscripts", "-i", str(built.cobbler))
    share = root / SHARE.lstrip("/")
    for rel in ("kickstart_snippets/sample_hostkv.ks", "modules/hostkv/__init__.py",
                "protocol/hostkv/common/options.py"):
        with open(str(share / rel), "a") as f:
            f.write("# installed copy marker\n")
    cob = scratch_cobbler(tmp_path / "cobbler")
    before = tree_digests(cob)
    hc = str(root / "usr/sbin/hostkv-cobbler")
    args = ["--root", str(cob), "--cobbler-dir", COBBLER_DIR]
    env = dict(clean_env(), HOSTKV_COBBLER_PYTHON=VENV_PY)      # the Python that runs cobblerd

    proc = run([hc, "install"] + args, cwd=str(tmp_path), env=env)
    common = py_files(share / "protocol/hostkv/common")
    count = len(py_files(share / "modules/hostkv")) + len(common) + 2    # + _lib/common/, snippet, template
    assert "installed %d files (%d written, 0 removed)" % (count, count) in proc.stdout, proc.stdout
    modules = cob / COBBLER_DIR.lstrip("/") / "modules/hostkv"
    shipped = {("modules/hostkv/" + k): v for k, v in tree_digests(share / "modules/hostkv").items()}
    landed = {("modules/hostkv/" + k): v for k, v in tree_digests(modules).items()}
    shipped_common = tree_digests(share / "protocol/hostkv/common")
    assert {name: landed.pop("modules/hostkv/_lib/common/" + name) for name in common} == \
        {name: shipped_common[name] for name in common}
    assert landed.pop("modules/hostkv/_lib/common") == "dir"
    assert landed == shipped
    for src, dst in (("kickstart_snippets/hostkv_agent", "var/lib/cobbler/snippets/hostkv_agent"),
                     ("kickstart_snippets/sample_hostkv.ks", "var/lib/cobbler/templates/sample_hostkv.ks")):
        assert (cob / dst).read_bytes() == (share / src).read_bytes()
    assert (cob / "var/lib/cobbler/templates/sample_hostkv.ks").read_text().endswith("# installed copy marker\n")
    manifest = json.loads((cob / MANIFEST.lstrip("/")).read_text())
    assert len(manifest["files"]) == count and all(p.startswith("/") and str(cob) not in p for p in manifest["files"])

    # status: intact, also with the fallback interpreter (no HOSTKV_COBBLER_PYTHON, no cobbler on PATH)
    proc = run([hc, "status"] + args, cwd=str(tmp_path), env=clean_env())
    assert proc.stdout.splitlines()[-1] == "hostkv-cobbler: installed, intact", proc.stdout
    (cob / "var/lib/cobbler/snippets/hostkv_agent").write_text("edited\n")
    proc = run([hc, "status"] + args, cwd=str(tmp_path), env=env, check=False)
    assert proc.returncode == 1 and "modified /var/lib/cobbler/snippets/hostkv_agent" in proc.stdout

    proc = run([hc, "uninstall"] + args, cwd=str(tmp_path), env=env)
    assert "removed %d files" % (count - 1) in proc.stdout
    # exactly as it was, but for the admin's edit, kept as .rpmsave (said so)
    assert "kept your edited /var/lib/cobbler/snippets/hostkv_agent as" in proc.stdout, proc.stdout
    assert tree_digests(cob) == dict(before, **{"var/lib/cobbler/snippets/hostkv_agent.rpmsave":
                                                hashlib.sha256(b"edited\n").hexdigest()})
    proc = run([hc, "status"] + args, cwd=str(tmp_path), env=env, check=False)
    assert proc.returncode == 3 and "not installed" in proc.stdout


def test_installed_hostkv_cobbler_names_a_missing_tree(built, tmp_path):
    """A wrapper whose private dir is gone says so (instead of a Python traceback)."""
    root = tmp_path / "root"
    root.mkdir()
    rpm_root(root, "--noscripts", "-i", str(built.cobbler))
    shutil.rmtree(str(root / SHARE.lstrip("/")))
    proc = run([str(root / "usr/sbin/hostkv-cobbler"), "status"], env=clean_env(), check=False)
    assert proc.returncode == 1 and "hostkv_cobbler.py not found" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- scriptlets for real

def test_scriptlets_run_for_real_in_a_chroot(built, built_r2, tmp_path):
    """rpm WITH scriptlets into an overlay of this machine's / (private namespace).  There, the
    system python3 sees the project venv's site-packages (one .pth in the overlay only), i.e. a
    real koan 3.0.1 and the real Cobbler 3.3.10 package, and /etc/cobbler/settings.yaml exists:

    install (nothing hooked) -> the admin's `hostkv-koan install` + `hostkv-cobbler install` ->
    upgrade to release 2 (hook kept, Cobbler copies refreshed) -> erase (both removed by %preun)."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    site = venv_site()
    pth = "%s/hostkv_koan.pth" % site
    modules = "%s/cobbler/modules/hostkv" % site
    ks = "/var/lib/cobbler/templates/sample_hostkv.ks"
    snippet = "/var/lib/cobbler/snippets/hostkv_agent"
    rpm = "rpm --root {m} --dbpath /var/lib/rpm-hostkv-test --nodeps".format(m=merged)

    def state(label):
        return ('echo "{label}: pth=$(test -e {m}{pth} && echo yes || echo no)'
                ' modules=$(test -e {m}{modules}/sync_post_publish.py && echo yes || echo no)'
                ' snippet=$(test -e {m}{snippet} && echo yes || echo no)'
                ' manifest=$(test -e {m}{manifest} && echo yes || echo no)'
                ' r2=$(test -e {m}{ks} && {{ grep -c "release 2 marker" {m}{ks} || :; }} || echo none)'
                ' koanpyc=$(ls {m}{klib}/hostkv_koan/__pycache__ 2>/dev/null | grep -c "^hook\\.")'
                ' koanlib=$(test -e {m}{klib} && echo yes || echo no)"'
                .format(label=label, m=merged, pth=pth, modules=modules, snippet=snippet,
                        manifest=MANIFEST, ks=ks, klib=KOAN_LIB))

    script = """
export PATH=/usr/sbin:/usr/bin:/sbin:/bin; unset PYTHONPATH PYTHONHOME   # as a root shell in the chroot
mount -t overlay overlay -o lowerdir=/,upperdir={u},workdir={w} {m}
mount --rbind /dev {m}/dev
mount -t proc proc {m}/proc
mount -t tmpfs tmpfs {m}/run
mount -t tmpfs tmpfs {m}/tmp
# the venv's site-packages through an overlay of its own: visible even when the checkout (and so
# the venv) lives under /tmp, and writes into it stay in the overlay
mkdir -p {m}{site} {su} {sw}
mount -t overlay overlay -o lowerdir={site},upperdir={su},workdir={sw} {m}{site}
echo {site} > {m}/usr/lib/python3/dist-packages/zz-hostkv-test-venv.pth
mkdir -p {m}/etc/cobbler {m}/var/lib/cobbler/snippets {m}/var/lib/cobbler/templates
printf 'autoinstall_snippets_dir: /var/lib/cobbler/snippets\\nautoinstall_templates_dir: /var/lib/cobbler/templates\\n' > {m}/etc/cobbler/settings.yaml
{rpm} -i {h1} {c1}
{s_installed}
chroot {m} /usr/sbin/hostkv-koan install
chroot {m} /usr/sbin/hostkv-cobbler install
{s_hooked}
echo "## the admin's edit" >> {m}{ks}
{rpm} -U {h2} {c2}
{s_upgraded}
echo "edit: kept=$(grep -c "the admin's edit" {m}{ks}) rpmnew=$(grep -c "release 2 marker" {m}{ks}.rpmnew)"
{rpm} -e hostkv-host hostkv-cobbler
{s_erased}
""".format(u=upper, w=work, m=merged, site=site, su=tmp_path / "site-upper", sw=tmp_path / "site-work", ks=ks, rpm=rpm, h1=built.host, c1=built.cobbler,
           h2=built_r2.host, c2=built_r2.cobbler, s_installed=state("installed"),
           s_hooked=state("hooked"), s_upgraded=state("upgraded"), s_erased=state("erased"))
    proc = unshare_sh(script, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if re.match(r"\w+: pth=", l)]
    assert lines == [
        "installed: pth=no modules=no snippet=no manifest=no r2=none koanpyc=1 koanlib=yes",
        "hooked: pth=yes modules=yes snippet=yes manifest=yes r2=0 koanpyc=1 koanlib=yes",
        "upgraded: pth=yes modules=yes snippet=yes manifest=yes r2=0 koanpyc=1 koanlib=yes",
        "erased: pth=no modules=no snippet=no manifest=no r2=none koanpyc=0 koanlib=no",
    ], proc.stdout + proc.stderr
    # %posttrans kept the admin's edit of the template, wrote release 2's beside it and said so
    assert "edit: kept=1 rpmnew=1" in proc.stdout, proc.stdout
    assert ("hostkv-cobbler: kept your edited %s; the new version is %s.rpmnew" % (ks, ks)) \
        in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # the machine itself was not touched: everything went to the overlay's upper dir
    assert not Path(pth).exists() and not Path(modules).exists() and not Path("/etc/cobbler").exists()
    assert not Path(KOAN_LIB).exists()
