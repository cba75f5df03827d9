"""Build (and cache) the REAL-OS test guest: Debian 12 with systemd as PID 1 and udev, on ext4.

Contract:
  * ``build_base_image(cache_root=None) -> BaseImage`` with ``.root`` (a directory laid out as
    the guest's ``/``: never modify it, copy it with :func:`copy_root`), ``.kernel`` (the PVH
    vmlinux when the Debian kernel allows it, else the bzImage), ``.initrd``, ``.kernel_release``,
    ``.key`` and ``.manifest`` (text: what went in, package versions).  Building takes ~1-2 min
    (mmdebstrap ~40 s); a cache hit costs well under a second.
  * The root: ``mmdebstrap --variant=minbase`` of bookworm plus PACKAGES (systemd-sysv, udev,
    python3, rpm, kmod, curl), no documentation, man pages or locales; the kernel package that
    ``linux-image-amd64`` depends on is downloaded in the same run (same mirror state) and only
    KERNEL_MODULES of it are installed under /usr/lib/modules/<release> (+ depmod), so udev loads
    virtio_console by modalias like on any distribution.  Configured like an EL guest where that
    matters: rpm's database in /var/lib/rpm (Debian's rpm defaults to ~/.rpmdb), initialised and
    empty.  A login user ``USER`` (uid 1000, no sudo) for "normal user" checks; root has no
    password (serial-console logins for post-mortems; the guest has no network).  The test exec
    server (tests/harness/guest_init/exec_server.py) runs as a systemd unit
    (real_os_files/hostkv-test-exec.service) on port org.hostkv.test.0.
  * The initramfs is a busybox one (real_os_files/initramfs-init) that loads virtio-pci,
    virtio-blk and ext4, mounts ``root=`` and switch_roots to /sbin/init (systemd).
  * :func:`make_disk` turns a root directory into an ext4 image with ``mkfs.ext4 -d`` (no loop
    device, no mount); :func:`make_overlay` makes a qcow2 overlay of it for one domain.
  * Cache: ``$HOSTKV_TEST_CACHE`` (default /var/cache/hostkv-test) ``/real-os/<key>/``.  The key
    hashes every input: this file and real_os_files/, the exec server, PACKAGES, KERNEL_MODULES,
    the mmdebstrap version, the host's busybox and the mirror state mmdebstrap resolves against
    (the host's apt sources and the InRelease files of its lists: `apt-get update` refreshes
    them).  Builds are serialised with a lock file and published by renaming a finished dir;
    never a half-built image.  Only the newest 2 images are kept.
  * Every failure raises :class:`RealOsImageError` naming the step and its output.
"""

import fcntl
import glob
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time

from tests.harness import guest_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "real_os_files")
EXEC_SERVER = os.path.join(HERE, "guest_init", "exec_server.py")
CACHE_ROOT = os.environ.get("HOSTKV_TEST_CACHE", "/var/cache/hostkv-test")

SUITE = "bookworm"
# curl: Cobbler's stock autoinstall_done snippet (in every sample kickstart's %post) calls it.
PACKAGES = ("systemd-sysv", "udev", "python3", "rpm", "kmod", "curl")
KERNEL_META = "linux-image-amd64"
USER = "alice"
# dpkg path filters: what a headless test guest never reads (saves ~30 MB and build time)
PATH_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
                 "/usr/share/info/*", "/usr/share/lintian/*")
PATH_INCLUDES = ("/usr/share/doc/*/copyright",)

# Kernel modules in the root (under kernel/ of /usr/lib/modules/<release>): the virtio devices
# the test domains have, and the root file system's (guest_kernel.py's list).  udev loads
# virtio_console itself.
KERNEL_MODULES = guest_kernel.DISK_MODULES
# ... and the ones the initramfs loads, in dependency order, to mount the root.
INITRAMFS_LOAD = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk", "crc16", "mbcache", "crc32c_generic", "jbd2", "ext4")
# Units a test guest without network or timers to wait for does not need (boot time under TCG).
# (Nothing hostkv's unit, rule or agent depends on: the rest of systemd and udev stays as shipped.)
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "e2scrub_reap.service", "fstrim.timer", "systemd-timesyncd.service",
                "modprobe@dm_mod.service", "modprobe@efi_pstore.service", "modprobe@fuse.service",
                "modprobe@loop.service", "modprobe@drm.service", "dev-hugepages.mount",
                "dev-mqueue.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
                "sys-fs-fuse-connections.mount")


class RealOsImageError(RuntimeError):
    """A step of the real-OS image build failed; the message names the step and its output."""


class BaseImage(object):
    def __init__(self, path):
        self.path = path
        self.root = os.path.join(path, "root")
        with open(os.path.join(path, "kernel-name")) as f:
            self.kernel = os.path.join(path, f.read().strip())
        self.bzimage = os.path.join(path, "vmlinuz")
        self.initrd = os.path.join(path, "initrd.cpio")
        with open(os.path.join(path, "release")) as f:
            self.kernel_release = f.read().strip()
        with open(os.path.join(path, "manifest.txt")) as f:
            self.manifest = f.read()
        self.key = os.path.basename(path)

    def __repr__(self):
        return "BaseImage(%r)" % self.path


def _run(argv, what, timeout=900, **kw):
    try:
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RealOsImageError("%s: %s failed: %s" % (what, " ".join(argv), err))
    out = res.stdout.decode(errors="replace")
    if res.returncode != 0:
        raise RealOsImageError("%s: %s exited %d:\n%s" % (what, " ".join(argv), res.returncode,
                                                          out[-4000:]))
    return out


def _chroot(root, shell, what):
    return _run(["chroot", root, "/bin/sh", "-ec", shell], what,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})


# ---------------------------------------------------------------- the cache key

def _file_digest(h, path, label):
    h.update(("%s %s\n" % (label, os.path.basename(path))).encode())
    with open(path, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())


def _mirror_state(h):
    """The host's apt sources and the InRelease of each list: what mmdebstrap resolves against."""
    paths = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*"))
    paths += sorted(glob.glob("/var/lib/apt/lists/*_dists_%s*InRelease" % SUITE))
    for path in paths:
        if os.path.isfile(path):
            _file_digest(h, path, "apt")


def cache_key():
    h = hashlib.sha256()
    _file_digest(h, os.path.abspath(__file__), "builder")
    for name in sorted(os.listdir(FILES)):
        _file_digest(h, os.path.join(FILES, name), "file")
    _file_digest(h, EXEC_SERVER, "exec")
    h.update(repr((SUITE, PACKAGES, KERNEL_META, USER, PATH_EXCLUDES, PATH_INCLUDES,
                   KERNEL_MODULES, INITRAMFS_LOAD, MASKED_UNITS)).encode())
    h.update(_run(["mmdebstrap", "--version"], "mmdebstrap --version").encode())
    _file_digest(h, _busybox(), "busybox")
    _mirror_state(h)
    return h.hexdigest()[:24]


def _busybox():
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        raise RealOsImageError("no busybox (apt-get install busybox-static): the initramfs needs it")
    return os.path.realpath(path)


# ---------------------------------------------------------------- the build

def _mmdebstrap(root, kernel_dir):
    """mmdebstrap the root; the kernel .deb is downloaded inside it into ``kernel_dir``."""
    hook = ('chroot "$1" sh -ec \'cd /var/tmp; '
            'pkg=$(apt-cache depends %s | sed -n "s/^ *Depends: \\(linux-image-[0-9].*-amd64\\)$/\\1/p" | head -n1); '
            'test -n "$pkg"; apt-get download -q "$pkg"\'' % KERNEL_META)
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
            "--include=" + ",".join(PACKAGES), "--customize-hook=" + hook,
            "--customize-hook=sync-out /var/tmp %s" % kernel_dir,
            "--customize-hook=rm -f \"$1\"/var/tmp/*.deb"]
    for p in PATH_EXCLUDES:
        argv.append("--dpkgopt=path-exclude=" + p)
    for p in PATH_INCLUDES:
        argv.append("--dpkgopt=path-include=" + p)
    argv += [SUITE, root]
    _run(argv, "mmdebstrap", timeout=1200)


def _install_kernel(root, deb, out):
    """vmlinuz (+ PVH vmlinux) into ``out``; KERNEL_MODULES into the root, depmod'ed.

    Returns (release, kernel file name in ``out``)."""
    x = tempfile.mkdtemp(prefix=".kx-", dir=out)
    try:
        _run(["dpkg-deb", "-x", deb, x], "extracting %s" % os.path.basename(deb))
        vmlinuz = glob.glob(os.path.join(x, "boot", "vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise RealOsImageError("expected one vmlinuz in %s, found %r" % (deb, vmlinuz))
        release = os.path.basename(vmlinuz[0])[len("vmlinuz-"):]
        shutil.copy2(vmlinuz[0], os.path.join(out, "vmlinuz"))
        src = os.path.join(x, "lib", "modules", release)
        dst = os.path.join(root, "usr", "lib", "modules", release)
        for mod in KERNEL_MODULES:
            if not os.path.exists(os.path.join(src, "kernel", mod)):
                raise RealOsImageError("kernel module %s is not in %s" % (mod, deb))
            os.makedirs(os.path.dirname(os.path.join(dst, "kernel", mod)), exist_ok=True)
            shutil.copy2(os.path.join(src, "kernel", mod), os.path.join(dst, "kernel", mod))
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if os.path.exists(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
        _chroot(root, "depmod %s" % release, "depmod")
        name = "vmlinux" if guest_kernel.extract_pvh_kernel(vmlinuz[0], os.path.join(out, "vmlinux")) else "vmlinuz"
        return release, name
    finally:
        shutil.rmtree(x, ignore_errors=True)


def _initramfs(root, release, out_path):
    """The busybox initramfs: /init, busybox + its applets, the INITRAMFS_LOAD modules."""
    stage = tempfile.mkdtemp(prefix=".ird-", dir=os.path.dirname(out_path))
    try:
        for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
            os.makedirs(os.path.join(stage, d))
        shutil.copy2(_busybox(), os.path.join(stage, "bin", "busybox"))
        for applet in ("sh", "mount", "umount", "insmod", "sleep", "mkdir", "cat", "switch_root",
                       "poweroff", "echo"):
            os.symlink("busybox", os.path.join(stage, "bin", applet))
        shutil.copy2(os.path.join(FILES, "initramfs-init"), os.path.join(stage, "init"))
        os.chmod(os.path.join(stage, "init"), 0o755)
        moddir = os.path.join(root, "usr", "lib", "modules", release, "kernel")
        by_name = dict((os.path.basename(m)[:-3], m) for m in KERNEL_MODULES)
        for name in INITRAMFS_LOAD:
            shutil.copy2(os.path.join(moddir, by_name[name]), os.path.join(stage, "modules"))
        with open(os.path.join(stage, "modules", "load-order"), "w") as f:
            f.write("\n".join(INITRAMFS_LOAD) + "\n")
        os.mknod(os.path.join(stage, "dev", "console"), stat.S_IFCHR | 0o600, os.makedev(5, 1))
        names = _run(["find", "."], "listing the initramfs", cwd=stage)
        with open(out_path, "wb") as out:
            proc = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "--owner=0:0"],
                                  input="\n".join(sorted(names.split())).encode() + b"\n",
                                  stdout=out, stderr=subprocess.PIPE, cwd=stage, timeout=120)
        if proc.returncode != 0:
            raise RealOsImageError("cpio of the initramfs failed: %s" % proc.stderr.decode())
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _configure(root):
    """Everything the guest needs beyond the packages (see the module docstring)."""
    def write(rel, text, mode=0o644):
        path = os.path.join(root, rel.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    write("/etc/fstab", "# hostkv real-OS test guest: the ext4 root on virtio-blk (no fsck pass)\n"
                        "/dev/vda / ext4 rw,relatime 0 0\n")
    write("/etc/hostname", "hostkv-realos\n")
    write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    # EL keeps rpm's database in /var/lib/rpm; Debian's rpm defaults to ~/.rpmdb (it is not
    # Debian's package manager).  One macro makes `rpm -q` mean what it means on EL.
    write("/etc/rpm/macros.hostkv-dbpath", "# hostkv test guest: rpm's database where EL has it\n"
                                           "%_dbpath /var/lib/rpm\n")
    os.makedirs(os.path.join(root, "usr/lib/hostkv-test"), exist_ok=True)
    shutil.copy2(EXEC_SERVER, os.path.join(root, "usr/lib/hostkv-test/exec_server.py"))
    shutil.copy2(os.path.join(FILES, "hostkv-test-exec.service"),
                 os.path.join(root, "etc/systemd/system/hostkv-test-exec.service"))
    _chroot(root, "; ".join([
        "rpm --initdb",
        "useradd -m -u 1000 -s /bin/bash %s" % USER,
        "passwd -d root >/dev/null",
        "systemctl enable hostkv-test-exec.service",
        "systemctl mask %s" % " ".join(MASKED_UNITS),
        "python3 -m compileall -q /usr/lib/hostkv-test",
    ]), "configuring the root")


def _manifest(root, release, kernel_deb):
    pkgs = _chroot(root, "dpkg-query -W -f '${Package} ${Version}\\n'", "listing packages")
    return ("hostkv real-OS test guest (tests/harness/real_os_image.py)\nbuilt %s\nsuite %s\n"
            "kernel %s (%s)\n\n%s" % (time.strftime("%Y-%m-%d %H:%M:%S"), SUITE, release,
                                       os.path.basename(kernel_deb), pkgs))


def _prune(imagedir, keep, newest=2, min_age=600):
    entries = sorted(((os.stat(p).st_mtime, p) for p in glob.glob(os.path.join(imagedir, "*"))
                      if os.path.isdir(p) and p != keep), reverse=True)
    for mtime, path in entries[newest - 1:]:
        if time.time() - mtime > min_age:
            shutil.rmtree(path, ignore_errors=True)


def build_base_image(cache_root=None, log=None):
    """The cached :class:`BaseImage` for the current inputs, built first if there is none."""
    imagedir = os.path.join(cache_root or CACHE_ROOT, "real-os")
    os.makedirs(imagedir, exist_ok=True)
    os.chmod(imagedir, 0o755)       # QEMU (libvirt-qemu) reads the kernels and disks below
    key = cache_key()
    final = os.path.join(imagedir, key)
    with open(os.path.join(imagedir, ".lock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(final, "manifest.txt")):
            os.utime(final)
            return BaseImage(final)
        t0 = time.monotonic()
        work = tempfile.mkdtemp(prefix=".build-%s-" % key, dir=imagedir)
        try:
            out = os.path.join(work, key)
            root = os.path.join(out, "root")
            kdir = os.path.join(work, "kernel-deb")
            os.makedirs(kdir)
            os.makedirs(out)
            _mmdebstrap(root, kdir)
            debs = glob.glob(os.path.join(kdir, "linux-image-*.deb"))
            if len(debs) != 1:
                raise RealOsImageError("the kernel download left %r in %s" % (debs, kdir))
            release, kernel_name = _install_kernel(root, debs[0], out)
            _configure(root)
            _initramfs(root, release, os.path.join(out, "initrd.cpio"))
            manifest = _manifest(root, release, debs[0])
            for name, text in (("release", release), ("kernel-name", kernel_name),
                               ("manifest.txt", manifest + "\nbuild time %.1f s\n"
                                % (time.monotonic() - t0))):
                with open(os.path.join(out, name), "w") as f:
                    f.write(text)
            os.chmod(out, 0o755)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if log:
            log("real-OS base image %s built in %.1f s" % (key, time.monotonic() - t0))
        _prune(imagedir, keep=final)
        return BaseImage(final)


# ---------------------------------------------------------------- per use

def copy_root(image, dest):
    """A private, writable copy of the image's root at ``dest`` (hard links are kept)."""
    _run(["cp", "-a", "--reflink=auto", image.root, dest], "copying the root")
    return dest


def root_size_mib(root):
    out = _run(["du", "-s", "--block-size=1M", root], "du")
    return int(out.split()[0])


def make_disk(root, path, size_mib=None):
    """``mkfs.ext4 -d root`` into a new sparse image ``path`` (default: the root's size + 512 MiB
    free for the guest).  No loop device and no mount: the file system is written directly."""
    size_mib = size_mib or root_size_mib(root) + 512
    if os.path.exists(path):
        os.unlink(path)
    _run(["mkfs.ext4", "-q", "-F", "-L", "hostkv-root", "-d", root, path, "%dM" % size_mib],
         "mkfs.ext4 -d")
    os.chmod(path, 0o644)
    return path


def make_overlay(base, path):
    """A qcow2 overlay of the raw image ``base`` at ``path`` (the domain writes only there)."""
    if os.path.exists(path):
        os.unlink(path)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, path],
         "qemu-img create")
    os.chmod(path, 0o666)
    return path


if __name__ == "__main__":   # python -m tests.harness.real_os_image: build (or find) the image
    t = time.monotonic()
    img = build_base_image(log=print)
    print("%r in %.1f s\n%s" % (img, time.monotonic() - t, img.manifest.splitlines()[3]))
