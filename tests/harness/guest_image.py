"""Build (and cache) the tiny test guest: a Debian kernel + an initramfs running OUR agent.

Contract:
  * ``build_guest_image(agent_root=None) -> GuestImage`` with ``.kernel`` and ``.initrd`` (absolute
    paths of files nobody modifies), ``.key`` (the cache key) and ``.kernel_release``.
  * The initramfs holds: busybox-static, python3.11-minimal + libpython3.11-minimal +
    libpython3.11-stdlib (minus tests/docs/GUI/unused C modules) with .pyc precompiled
    (unchecked-hash), the shared libraries ``ldd`` names, the virtio/ext4/net kernel modules flat
    in /lib/modules/hostkv-test/, tests/harness/guest_init/{init,exec_server.py}, and the agent
    tree overlaid onto / last.  It is an UNcompressed newc cpio (boots faster under TCG).
  * ``agent_root``: a directory laid out like the guest's / (the agent as installed:
    usr/lib/hostkv-agent/hostkv/{protocol.py,agent/}, usr/bin/hostkv, usr/sbin/hostkv-agent).
    Default: the hostkv-agent RPM's payload (agent_payload.py: built from this checkout with
    rpmbuild, unpacked) — the VM tests run what ships; ``"checkout"``:
    agent_payload.checkout_agent_root.
  * Debian packages come from ``apt-get download`` (candidate versions; ``apt-get update`` is run
    once if apt knows no candidate or the download fails) and are kept under the cache.
  * Cache: ``$HOSTKV_TEST_CACHE`` or /var/cache/hostkv-test/, images in ``images/<key>/`` where the
    key hashes every input: the .debs, the host libraries copied, the init files, the agent tree
    and this builder's own source.  Builds are serialised with a lock file and published with an
    atomic rename: never a half-written image.  Only the 8 most recently used images (29 MB
    initrds) are kept (older ones once unused for 10 minutes); the kernel part is unpacked once
    per kernel .deb into ``kernels/`` and shared.  A cache hit costs ~0.1 s.
  * Every failure raises :class:`GuestImageError` saying which step failed and its output.

This module is the recipe and the cache; the steps have modules of their own: debs.py (package
versions, download, unpack), guest_kernel.py (the kernel and its modules), guest_root.py (the
staged root file system), cpio.py (the initramfs format), build_step.py (running a step).
"""

import fcntl
import glob
import hashlib
import os
import shutil
import stat
import tempfile
import time

from tests.harness import agent_payload, build_step, cpio, debs, guest_kernel, guest_root
from tests.harness.build_step import GuestImageError  # noqa: F401 - raised by every step

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE_ROOT = os.environ.get("HOSTKV_TEST_CACHE", "/var/cache/hostkv-test")

KERNEL_META = "linux-image-amd64"
USER_PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-minimal",
                 "libpython3.11-stdlib")


class GuestImage(object):
    """A built guest: ``kernel`` and ``initrd`` paths, cache ``key``, ``kernel_release``.

    ``kernel`` is the uncompressed PVH-bootable vmlinux when the Debian kernel allows it (boots
    seconds faster under TCG), else the bzImage; ``bzimage`` is always the Debian vmlinuz."""

    def __init__(self, kernel, initrd, key, kernel_release, bzimage=None):
        self.kernel = kernel
        self.initrd = initrd
        self.key = key
        self.kernel_release = kernel_release
        self.bzimage = bzimage or kernel

    def __repr__(self):
        return "GuestImage(kernel=%r, initrd=%r)" % (self.kernel, self.initrd)


# ---------------------------------------------------------------- the cache key

def _sha256_file(path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def _hash_tree(h, root, label):
    """Feed every file/symlink under ``root`` (path, mode, content or target) into ``h``."""
    h.update(("tree %s\n" % label).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            h.update(("%s %o\n" % (rel, st.st_mode)).encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
            else:
                _sha256_file(path, h)


# ---------------------------------------------------------------- the build

def _prune_images(imagedir, keep, newest=8, min_age=600):
    """Delete cached images beyond the ``newest`` most recently used ones, but only those
    unused for ``min_age`` seconds (another test run may be about to boot one)."""
    dirs = []
    for name in os.listdir(imagedir):
        path = os.path.join(imagedir, name)
        if not name.startswith(".") and os.path.isdir(path) and path != keep:
            dirs.append((os.stat(path).st_mtime, path))
    dirs.sort(reverse=True)
    now = time.time()
    for mtime, path in dirs[newest - 1:]:
        if now - mtime > min_age:
            shutil.rmtree(path, ignore_errors=True)


BUILDER_MODULES = (__file__, build_step.__file__, cpio.__file__, debs.__file__,
                   guest_kernel.__file__, guest_root.__file__)


def _builder_hash():
    """Changes whenever any step of the recipe changes (their sources)."""
    h = hashlib.sha256()
    for path in BUILDER_MODULES:
        with open(os.path.abspath(path), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def build_guest_image(agent_root=None, cache_root=None):
    """Return the :class:`GuestImage` for ``agent_root``, building it into the cache if no image
    with the same inputs exists yet.  Default: the payload of the hostkv-agent RPM built from this
    checkout (tests/harness/agent_payload.py), so the VM tests exercise exactly what ships;
    ``"checkout"``: the agent tree assembled straight from the checkout's files."""
    cache = cache_root or CACHE_ROOT
    debdir = os.path.join(cache, "debs")
    extractdir = os.path.join(cache, "extract")
    imagedir = os.path.join(cache, "images")
    for d in (debdir, extractdir, imagedir):
        os.makedirs(d, exist_ok=True)
    tmp_agent = None
    lockf = open(os.path.join(cache, ".lock"), "w")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if agent_root is None:
            # What ships: the hostkv-agent RPM built from this checkout, unpacked.
            agent_root = str(agent_payload.agent_payload_root())
        elif agent_root == "checkout":
            tmp_agent = tempfile.mkdtemp(prefix="agent-root-", dir=cache)
            agent_root = agent_payload.checkout_agent_root(os.path.join(tmp_agent, "root"))
        elif not os.path.isdir(agent_root):
            raise GuestImageError("agent_root %r is not a directory" % agent_root)

        versions = debs.resolve_packages(cache, KERNEL_META, USER_PACKAGES)
        deb_files = [debs.fetch_deb(p, v, debdir) for p, v in versions]
        kernel_dir = guest_kernel.kernel_cache(deb_files[0], cache)
        extracted = [None] + [debs.extract_deb(d, extractdir) for d in deb_files[1:]]
        with open(os.path.join(kernel_dir, "release")) as f:
            release = f.read().strip()
        with open(os.path.join(kernel_dir, "kernel-name")) as f:
            kernel = os.path.join(kernel_dir, f.read().strip())

        h = hashlib.sha256()
        h.update(("builder %s\n" % _builder_hash()).encode())
        for (p, v), deb in zip(versions, deb_files):
            h.update(("deb %s %s\n" % (p, v)).encode())
            _sha256_file(deb, h)
        _hash_tree(h, guest_root.INIT_DIR, "init")
        _hash_tree(h, agent_root, "agent")
        # The host libraries are inputs too: hash the ones the interpreter itself needs
        # (the rest come from the same libc/system and change together with it).
        py = os.path.join(extracted[USER_PACKAGES.index("python3.11-minimal") + 1],
                          "usr", "bin", "python" + guest_root.PYVER)
        for lib in sorted(guest_root.ldd(py) or []):
            h.update(("lib %s\n" % lib).encode())
            _sha256_file(os.path.realpath(lib), h)
        key = h.hexdigest()[:24]

        final = os.path.join(imagedir, key)

        def image():
            return GuestImage(kernel, os.path.join(final, "initrd.cpio"), key, release,
                              os.path.join(kernel_dir, "vmlinuz"))

        if os.path.exists(os.path.join(final, "initrd.cpio")):
            os.utime(final)         # "recently used", for _prune_images
            return image()

        work = tempfile.mkdtemp(prefix=".build-%s-" % key, dir=imagedir)
        try:
            stage = os.path.join(work, "root")
            os.makedirs(stage)
            guest_root.stage_root(extracted[1:], os.path.join(kernel_dir, "modules"), agent_root, stage)
            out = os.path.join(work, "out")
            os.makedirs(out)
            cpio.write_cpio(stage, os.path.join(out, "initrd.cpio"),
                       extra_nodes=[("dev/console", stat.S_IFCHR | 0o600, 5, 1),
                                    ("dev/null", stat.S_IFCHR | 0o666, 1, 3)])
            with open(os.path.join(out, "inputs.txt"), "w") as f:
                f.write("kernel %s\n" % kernel)
                f.write("built %s\n" % time.strftime("%Y-%m-%d %H:%M:%S"))
                for p, v in versions:
                    f.write("%s %s\n" % (p, v))
                f.write("agent_root %s\n" % agent_root)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune_images(imagedir, keep=final)
        # The full kernel tree of older builder versions (400 MB) is not needed any more.
        for old in glob.glob(os.path.join(extractdir, "linux-image-*")):
            shutil.rmtree(old, ignore_errors=True)
        return image()
    finally:
        if tmp_agent:
            shutil.rmtree(tmp_agent, ignore_errors=True)
        fcntl.flock(lockf, fcntl.LOCK_UN)
        lockf.close()


if __name__ == "__main__":
    t0 = time.time()
    img = build_guest_image()
    print("%s  (%.1f s, initrd %.1f MB)" % (img, time.time() - t0,
                                             os.path.getsize(img.initrd) / 1e6))
