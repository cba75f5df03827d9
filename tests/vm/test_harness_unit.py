"""Fast checks of the VM harness's pure parts (no QEMU): accel choice, guest-side code
syntax, the cpio writer.  The real thing is exercised by test_harness_smoke.py."""

import ast
import os
import stat
import subprocess

import pytest

from tests.harness import accel, cpio, guest_kernel, guest_root

INIT_DIR = guest_root.INIT_DIR


@pytest.fixture
def fresh_accel(monkeypatch):
    monkeypatch.setattr(accel, "_decision", None)
    yield accel
    accel._decision = None


def test_accel_needs_cpu_flag_and_usable_device(fresh_accel, tmp_path, monkeypatch):
    monkeypatch.delenv("HOSTKV_TEST_ACCEL", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n")
    monkeypatch.setattr(accel, "_CPUINFO", str(cpuinfo))
    monkeypatch.setattr(accel, "_kvm_device_usable", lambda path=None: True)
    assert fresh_accel.use_kvm() is False          # /dev/kvm alone is not enough (kvm_pvm)
    assert fresh_accel.qemu_accel_args()[:2] == ["-accel", "tcg,tb-size=64"]
    assert fresh_accel.libvirt_domain_type() == "qemu"

    fresh_accel._decision = None
    cpuinfo.write_text("flags\t\t: fpu vmx sse2\n")
    assert fresh_accel.use_kvm() is True
    assert fresh_accel.qemu_accel_args() == ["-accel", "kvm"]
    assert fresh_accel.libvirt_domain_type() == "kvm"

    fresh_accel._decision = None
    monkeypatch.setattr(accel, "_kvm_device_usable", lambda path=None: False)
    assert fresh_accel.use_kvm() is False


def test_accel_override(fresh_accel, monkeypatch):
    monkeypatch.setenv("HOSTKV_TEST_ACCEL", "tcg")
    assert fresh_accel.libvirt_domain_type() == "qemu"
    fresh_accel._decision = None
    monkeypatch.setenv("HOSTKV_TEST_ACCEL", "xen")
    with pytest.raises(ValueError, match="HOSTKV_TEST_ACCEL"):
        fresh_accel.use_kvm()


def test_this_machine_uses_tcg_unless_it_has_vmx_or_svm():
    with open("/proc/cpuinfo") as f:
        has_flag = any(w in ("vmx", "svm") for line in f if line.startswith("flags")
                       for w in line.split())
    if not has_flag and not os.environ.get("HOSTKV_TEST_ACCEL"):
        assert accel.libvirt_domain_type() == "qemu"


def test_exec_server_is_python36_stdlib_only():
    path = os.path.join(INIT_DIR, "exec_server.py")
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path, feature_version=(3, 6))
    stdlib = {"errno", "json", "os", "select", "signal", "subprocess", "sys", "threading", "time"}
    for node in ast.walk(tree):
        assert not isinstance(node, ast.NamedExpr)
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= stdlib
        if isinstance(node, ast.ImportFrom):
            raise AssertionError("from-import in guest code: %s" % node.module)
        if isinstance(node, ast.JoinedStr):
            raise AssertionError("f-string in exec_server.py (line %d)" % node.lineno)


def test_init_is_valid_busybox_sh():
    res = subprocess.run(["busybox", "sh", "-n", os.path.join(INIT_DIR, "init")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    assert res.returncode == 0, res.stdout
    assert os.access(os.path.join(INIT_DIR, "init"), os.X_OK)


def test_cpio_writer_round_trips_with_gnu_cpio(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "init").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(str(root / "init"), 0o755)
    (root / "usr" / "bin" / "odd").write_bytes(b"x" * 5)
    os.symlink("/init", str(root / "usr" / "bin" / "link"))
    out = tmp_path / "a.cpio"
    cpio.write_cpio(str(root), str(out),
                    extra_nodes=[("dev/console", stat.S_IFCHR | 0o600, 5, 1)])
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=open(str(out), "rb"),
                             stdout=subprocess.PIPE, timeout=30, check=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3]
             for line in listing.splitlines()]
    assert names == ["init", "usr", "usr/bin", "usr/bin/link", "usr/bin/odd", "dev/console"]
    assert "-rwxr-xr-x" in listing.splitlines()[0]
    assert listing.splitlines()[-1].startswith("crw-------")
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching",
                    "dev/*"], stdin=open(str(out), "rb"), cwd=str(x), check=True, timeout=30)
    assert (x / "usr" / "bin" / "odd").read_bytes() == b"x" * 5
    assert os.readlink(str(x / "usr" / "bin" / "link")) == "/init"


def test_pvh_note_detection_rejects_non_elf():
    assert guest_kernel.has_pvh_note(b"MZ" + b"\0" * 100) is False


def test_source_roots_are_declared_once():
    """pytest.ini's pythonpath names the checkout's source roots that tests.harness gives
    subprocesses (tests.harness.SOURCE_DIRS), so both see the same code."""
    import configparser
    from tests import harness
    ini = configparser.ConfigParser()
    ini.read(os.path.join(harness.REPO, "pytest.ini"))
    pythonpath = ini["pytest"]["pythonpath"].split()
    assert [d for d in pythonpath if d in harness.SOURCE_DIRS] == list(harness.SOURCE_DIRS)
    assert os.environ["PYTHONPATH"].split(os.pathsep)[:3] == list(harness.SOURCE_ROOTS)
