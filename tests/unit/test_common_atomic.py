"""hostkv.common.atomic: one atomic, durable file replacement (its contract, checked)."""
import os
import subprocess
import sys

import pytest

from hostkv.common import atomic


def test_replaces_with_mode_regardless_of_umask(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    old = os.umask(0o077)
    try:
        atomic.write_atomic(str(path), "new ü")
        atomic.write_atomic(str(tmp_path / "g"), b"\x00bytes", mode=0o600)
    finally:
        os.umask(old)
    assert path.read_text(encoding="utf-8") == "new ü" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert (tmp_path / "g").read_bytes() == b"\x00bytes" and oct((tmp_path / "g").stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(str(tmp_path))) == ["f", "g"]        # no temp file left


def test_durable_fsyncs_file_and_directory_and_not_durable_does_not(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    atomic.write_atomic(str(tmp_path / "d"), "x")
    assert len(calls) == 2
    atomic.write_atomic(str(tmp_path / "n"), "x", durable=False)
    assert len(calls) == 2


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("old")

    def broken(fd):
        raise OSError(5, "I/O error")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        atomic.write_atomic(str(path), "new")
    assert path.read_text() == "old" and os.listdir(str(tmp_path)) == ["f"]


def test_makedirs_and_stale_temps(tmp_path):
    path = tmp_path / "a" / "b" / "conf"
    atomic.write_atomic(str(path), "x", makedirs=True)
    stale = path.parent / (atomic.temp_prefix(str(path)) + "0123abcd")
    others = [path.parent / ".conf.swp", path.parent / ".other.0123abcd"]
    for p in [stale] + others:
        p.write_text("x")
    atomic.remove_stale_temps(str(path))
    assert not stale.exists() and all(p.exists() for p in others) and path.read_text() == "x"


def test_imports_no_tempfile():
    """The guest agent imports this module at start: tempfile would pull shutil, random, bz2, lzma."""
    code = "import sys; import hostkv.common.atomic; print(sorted({'tempfile', 'shutil', 'random'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, universal_newlines=True,
                         env=dict(os.environ), check=True).stdout
    assert out.strip() == "[]"
