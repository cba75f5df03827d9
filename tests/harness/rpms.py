"""Build hostkv's RPMs with the real rpmbuild (packaging/build-rpms.sh) and unpack their payloads.

    rpms = build_rpms(dist_dir, release="1")      # -> RpmSet(agent=Path, host=Path, srpm=Path)
    extract_payload(rpms.agent, dest_dir)         # rpm2cpio | cpio into dest_dir
    source_digest()                               # hash of what build-rpms.sh would package

Errors are loud: a failing build raises RpmBuildError with rpmbuild's output.
"""
import collections
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "build-rpms.sh"
# What build-rpms.sh puts into the source tarball (keep in sync with its `tar` line).
PACKAGED_PATHS = ("VERSION", "LICENSE", "docs", "protocol", "guest_agent", "host_service", "koan_patch",
                  "cobbler_plugin", "kickstart_snippets", "packaging")

RpmSet = collections.namedtuple("RpmSet", "agent host srpm")


class RpmBuildError(RuntimeError):
    """rpmbuild (or rpm2cpio/cpio) failed; the message carries its output."""


def copy_sources(dest):
    """Copy what the RPMs are built from (PACKAGED_PATHS, without bytecode) into ``dest``, e.g. to
    build another release from modified sources; returns ``dest`` as a Path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in PACKAGED_PATHS:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(str(p), str(dest / name), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(str(p), str(dest / name))
    return dest


def version(srcdir=REPO):
    """The version every package gets: the stripped content of <srcdir>/VERSION."""
    return (Path(srcdir) / "VERSION").read_text().strip()


def find_rpms(dist_dir):
    """The RpmSet in ``dist_dir``; raises RpmBuildError unless each kind is there exactly once."""
    dist_dir = Path(dist_dir)
    found = {}
    for kind, pattern in (("agent", "hostkv-agent-*.noarch.rpm"),
                          ("host", "hostkv-host-*.noarch.rpm"),
                          ("srpm", "hostkv-[0-9]*.src.rpm")):
        hits = sorted(dist_dir.glob(pattern))
        if len(hits) != 1:
            raise RpmBuildError("%s: expected exactly one %s, found %s"
                                % (dist_dir, pattern, [h.name for h in hits] or "none"))
        found[kind] = hits[0]
    return RpmSet(**found)


def build_rpms(dist_dir, release="1", srcdir=None, timeout=300):
    """Run packaging/build-rpms.sh into ``dist_dir``; return the RpmSet it produced."""
    cmd = ["bash", str(BUILD_SCRIPT), "--dist", str(dist_dir), "--release", str(release)]
    if srcdir is not None:
        cmd += ["--srcdir", str(srcdir)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout)
    if proc.returncode != 0:
        raise RpmBuildError("%s failed (rc %d):\n%s" % (" ".join(cmd), proc.returncode, proc.stdout))
    return find_rpms(dist_dir)


def extract_payload(rpm_path, dest):
    """Unpack the payload of ``rpm_path`` into ``dest`` (created) with rpm2cpio | cpio; return dest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rpm2cpio = subprocess.Popen(["rpm2cpio", str(rpm_path)], stdout=subprocess.PIPE)
    cpio = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=str(dest),
                          stdin=rpm2cpio.stdout, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=120)
    rpm2cpio.stdout.close()
    if rpm2cpio.wait(timeout=60) != 0 or cpio.returncode != 0:
        raise RpmBuildError("unpacking %s failed: %s" % (rpm_path, cpio.stderr))
    return dest


def source_digest(srcdir=REPO):
    """sha256 (hex) over the names, exec bits and contents of everything build-rpms.sh packages."""
    srcdir = Path(srcdir)
    h = hashlib.sha256()
    for top in PACKAGED_PATHS:
        root = srcdir / top
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            rel = p.relative_to(srcdir)
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts) \
                    or p.suffix in (".pyc", ".pyo"):
                continue
            h.update(("%s\0%d\0" % (rel.as_posix(), os.access(str(p), os.X_OK))).encode())
            h.update(p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()
