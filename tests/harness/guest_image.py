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
    rpmbuild, unpacked) — the VM tests run what ships; ``"checkout"``: :func:`checkout_agent_root`.
  * Debian packages come from ``apt-get download`` (candidate versions; ``apt-get update`` is run
    once if apt knows no candidate or the download fails) and are kept under the cache.
  * Cache: ``$HOSTKV_TEST_CACHE`` or /var/cache/hostkv-test/, images in ``images/<key>/`` where the
    key hashes every input: the .debs, the host libraries copied, the init files, the agent tree
    and this builder's own source.  Builds are serialised with a lock file and published with an
    atomic rename: never a half-written image.  Only the 8 most recently used images (29 MB
    initrds) are kept (older ones once unused for 10 minutes); the kernel part is unpacked once
    per kernel .deb into ``kernels/`` and shared.  A cache hit costs ~0.1 s.
  * Every failure raises :class:`GuestImageError` saying which step failed and its output.
"""

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
INIT_DIR = os.path.join(HERE, "guest_init")
CACHE_ROOT = os.environ.get("HOSTKV_TEST_CACHE", "/var/cache/hostkv-test")

KERNEL_META = "linux-image-amd64"
USER_PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-minimal",
                 "libpython3.11-stdlib")
PYVER = "3.11"

# Kernel modules, in load order (see guest_init/init); path relative to lib/modules/<rel>/kernel.
MODULES = (
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko", "drivers/char/virtio_console.ko",
    "drivers/block/virtio_blk.ko", "lib/crc16.ko", "fs/mbcache.ko", "crypto/crc32c_generic.ko",
    "fs/jbd2/jbd2.ko", "fs/ext4/ext4.ko",
    "net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko",
)

# Parts of the Python stdlib a headless test guest never uses (saves ~3 MB and boot time).
STDLIB_SOURCELESS = True
USE_PVH = True
# _ssl/_hashlib would pull in libcrypto+libssl (5 MB); hashlib falls back to the built-in
# _sha256/_md5/... modules of Debian's interpreter, and the guest needs no TLS.
STDLIB_DROP_DIRS = ("test", "pydoc_data", "idlelib", "tkinter", "turtledemo", "lib2to3",
                    "ensurepip", "distutils", "venv", "curses", "dbm", "sqlite3", "__phello__",
                    "unittest", "xmlrpc", "wsgiref")
STDLIB_DROP_FILES = ("turtle.py", "antigravity.py", "this.py", "__hello__.py", "pydoc.py",
                     "_pydecimal.py", "doctest.py", "pdb.py", "mailbox.py", "pickletools.py",
                     "EXTERNALLY-MANAGED", "LICENSE.txt")
DYNLOAD_DROP = re.compile(r"^(_test|_xxtest|_ctypes_test|xxlimited|_xxsub|_curses|_dbm|_sqlite3|"
                          r"nis|ossaudiodev|readline|audioop|_tkinter|_ssl|_hashlib)")


class GuestImageError(RuntimeError):
    """A step of the image build failed; the message names the step and its output."""


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


# ---------------------------------------------------------------- small helpers

def _run(argv, what, cwd=None, timeout=600, env=None):
    try:
        res = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GuestImageError("%s: %s failed: %s" % (what, " ".join(argv), err))
    if res.returncode != 0:
        raise GuestImageError("%s: %s exited %d:\n%s%s" % (
            what, " ".join(argv), res.returncode, res.stdout.decode(errors="replace")[-2000:],
            res.stderr.decode(errors="replace")[-2000:]))
    return res.stdout.decode(errors="replace")


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


# ---------------------------------------------------------------- Debian packages

_apt_updated = False


def _apt_update():
    global _apt_updated
    if not _apt_updated:
        _run(["apt-get", "update", "-qq"], "apt-get update", timeout=600)
        _apt_updated = True


def _candidate(pkg):
    """Candidate version of ``pkg`` per apt-cache policy, or None."""
    out = _run(["apt-cache", "policy", pkg], "apt-cache policy %s" % pkg)
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def _kernel_package():
    """The linux-image-<release>-amd64 package that linux-image-amd64 depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META], "apt-cache depends %s" % KERNEL_META)
    m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b", out)
    if not m:
        raise GuestImageError("cannot find the kernel package %s depends on:\n%s"
                              % (KERNEL_META, out))
    return m.group(1)


def _apt_state():
    """Changes whenever apt's view of candidates can change (lists, preferences, sources)."""
    parts = []
    for path in ("/var/lib/apt/lists", "/etc/apt/preferences.d", "/etc/apt/sources.list.d",
                 "/etc/apt/sources.list", "/etc/apt/preferences"):
        try:
            st = os.stat(path)
            parts.append("%s:%d:%d" % (path, st.st_mtime_ns, st.st_size))
        except OSError:
            parts.append(path + ":-")
    return "|".join(parts)


def _resolve_packages(cache):
    """[(package, version)] for the kernel and USER_PACKAGES (apt-get update once if needed).

    apt-cache is slow (seconds per call on a busy machine), so the answer is memoised in
    ``<cache>/resolved.json`` for as long as apt's lists and configuration are unchanged."""
    memo = os.path.join(cache, "resolved.json")
    state = _apt_state()
    try:
        with open(memo) as f:
            saved = json.load(f)
        if saved.get("state") == state and saved.get("packages") == list(USER_PACKAGES):
            return [tuple(pv) for pv in saved["versions"]]
    except (OSError, ValueError):
        pass
    versions = _resolve_packages_with_apt()
    tmp = memo + ".%d.tmp" % os.getpid()
    with open(tmp, "w") as f:
        json.dump({"state": _apt_state(), "packages": list(USER_PACKAGES),
                   "versions": versions}, f)
    os.rename(tmp, memo)
    return versions


def _resolve_packages_with_apt():
    for attempt in (0, 1):
        try:
            pkgs = [_kernel_package()] + list(USER_PACKAGES)
            versions = [(p, _candidate(p)) for p in pkgs]
        except GuestImageError:
            if attempt:
                raise
            _apt_update()
            continue
        if all(v for _p, v in versions):
            return versions
        if attempt:
            raise GuestImageError("apt has no candidate for: %s"
                                  % ", ".join(p for p, v in versions if not v))
        _apt_update()
    raise AssertionError("unreachable")


def _fetch_deb(pkg, version, debdir):
    """Path of ``pkg``_``version``.deb in ``debdir``, downloading it with apt-get if missing."""
    safe = "%s_%s_amd64.deb" % (pkg, version.replace(":", "%3a"))
    dest = os.path.join(debdir, safe)
    if os.path.exists(dest):
        return dest
    tmp = tempfile.mkdtemp(prefix=".dl-", dir=debdir)
    try:
        os.chmod(tmp, 0o755)
        argv = ["apt-get", "download", "-qq", "%s=%s" % (pkg, version)]
        try:
            _run(argv, "downloading %s" % pkg, cwd=tmp)
        except GuestImageError:
            _apt_update()
            _run(argv, "downloading %s (after apt-get update)" % pkg, cwd=tmp)
        got = glob.glob(os.path.join(tmp, "*.deb"))
        if len(got) != 1:
            raise GuestImageError("apt-get download %s left %r" % (pkg, got))
        os.rename(got[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_deb(deb, extractdir):
    """dpkg -x ``deb`` once into extractdir/<deb name>/ and return that dir."""
    dest = os.path.join(extractdir, os.path.basename(deb)[:-4])
    if os.path.isdir(dest):
        return dest
    tmp = tempfile.mkdtemp(prefix=".x-", dir=extractdir)
    _run(["dpkg", "-x", deb, tmp], "extracting %s" % os.path.basename(deb))
    os.rename(tmp, dest)
    return dest


# ---------------------------------------------------------------- the agent tree

def _wrapper_text(name, module):
    """An entry-point script like the RPM's (packaging/wrapper.py.in), for ``name``."""
    template = os.path.join(REPO, "packaging", "wrapper.py.in")
    if os.path.exists(template):
        with open(template) as f:
            text = f.read()
        return (text.replace("@NAME@", name).replace("@MODULE@", module)
                .replace("@LIBDIR@", "hostkv-agent"))
    return ("#!/usr/bin/python3 -s\nimport runpy, sys\nsys.path[0:1] = ['/usr/lib/hostkv-agent']\n"
            "runpy.run_module(%r, run_name='__main__', alter_sys=False)\n" % module)


def checkout_agent_root(dest):
    """Lay the agent out under ``dest`` as installed, from this checkout; return ``dest``.

    usr/lib/hostkv-agent/hostkv/protocol.py  <- protocol/hostkv/protocol.py
    usr/lib/hostkv-agent/hostkv/common/      <- protocol/hostkv/common/ (the shared rules)
    usr/lib/hostkv-agent/hostkv/agent/       <- guest_agent/hostkv/agent/ (if it exists yet)
    usr/bin/hostkv, usr/sbin/hostkv-agent    <- guest_agent/bin/<name>, else generated from
                                                packaging/wrapper.py.in like the RPM does
    (The lead may later replace this by the agent RPM's payload, unpacked with rpm2cpio.)
    """
    lib = os.path.join(dest, "usr", "lib", "hostkv-agent", "hostkv")
    os.makedirs(lib)
    shutil.copy2(os.path.join(REPO, "protocol", "hostkv", "protocol.py"), lib)
    shutil.copytree(os.path.join(REPO, "protocol", "hostkv", "common"), os.path.join(lib, "common"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    agent_src = os.path.join(REPO, "guest_agent", "hostkv", "agent")
    has_agent = os.path.isfile(os.path.join(agent_src, "__init__.py")) or \
        os.path.isfile(os.path.join(agent_src, "__main__.py"))
    if has_agent:
        shutil.copytree(agent_src, os.path.join(lib, "agent"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name, module, bindir in (("hostkv", "hostkv.agent.cli", "bin"),
                                     ("hostkv-agent", "hostkv.agent", "sbin")):
            target = os.path.join(dest, "usr", bindir, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = os.path.join(REPO, "guest_agent", "bin", name)
            if os.path.isfile(src):
                shutil.copy2(src, target)
            else:
                with open(target, "w") as f:
                    f.write(_wrapper_text(name, module))
            os.chmod(target, 0o755)
    return dest


# ---------------------------------------------------------------- shared libraries

def _ldd(path):
    """Absolute paths of the shared libraries ``path`` needs, or None if one is not found."""
    res = subprocess.run(["ldd", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=60)
    out = res.stdout.decode(errors="replace")
    if "not a dynamic executable" in out or "statically linked" in out:
        return []
    libs = []
    for line in out.splitlines():
        line = line.strip()
        if "=> not found" in line:
            return None
        m = re.match(r"(?:\S+ => )?(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


# ---------------------------------------------------------------- cpio (newc)

def _cpio_header(name, mode, nlink, size, rdevmajor=0, rdevminor=0, ino=0):
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevmajor, rdevminor, len(name) + 1, 0)
    return ("070701" + "".join("%08X" % v for v in fields) + name + "\0").encode()


def _pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def write_cpio(root, out_path, extra_nodes=()):
    """Write ``root`` as an uncompressed newc cpio (owner root, mtime 0, sorted: reproducible).

    ``extra_nodes``: [(path, mode, major, minor)] device nodes added without mknod.
    """
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            entries.append(rel)
        for name in sorted(filenames):
            entries.append(os.path.normpath(os.path.join(rel, name)))
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                entries.append(os.path.normpath(os.path.join(rel, name)))
    ino = 1
    with open(out_path, "wb") as out:
        for rel in entries:
            path = os.path.join(root, rel)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    data = f.read()
            elif stat.S_ISDIR(st.st_mode):
                if os.path.islink(path):
                    continue
                data = b""
            else:
                continue
            hdr = _cpio_header(rel, st.st_mode, 2 if stat.S_ISDIR(st.st_mode) else 1, len(data),
                               ino=ino)
            ino += 1
            out.write(hdr + _pad(len(hdr)) + data + _pad(len(data)))
        for name, mode, major, minor in extra_nodes:
            hdr = _cpio_header(name, mode, 1, 0, major, minor, ino=ino)
            ino += 1
            out.write(hdr + _pad(len(hdr)))
        hdr = _cpio_header("TRAILER!!!", 0, 1, 0)
        out.write(hdr + _pad(len(hdr)))


# ---------------------------------------------------------------- staging

def _copy_tree(src, dst):
    """Copy the contents of ``src`` onto ``dst`` (merging, symlinks kept as symlinks)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        tdir = os.path.normpath(os.path.join(dst, rel))
        if not os.path.isdir(tdir):
            os.makedirs(tdir)
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            t = os.path.join(tdir, name)
            if os.path.islink(s):
                if os.path.lexists(t):
                    os.unlink(t)
                os.symlink(os.readlink(s), t)
            elif os.path.isfile(s):
                if os.path.lexists(t):
                    os.unlink(t)
                shutil.copy2(s, t)


def _prune_stdlib(stage):
    libdir = os.path.join(stage, "usr", "lib", "python" + PYVER)
    for d in STDLIB_DROP_DIRS:
        shutil.rmtree(os.path.join(libdir, d), ignore_errors=True)
    for f in STDLIB_DROP_FILES:
        p = os.path.join(libdir, f)
        if os.path.lexists(p):
            os.unlink(p)
    dyn = os.path.join(libdir, "lib-dynload")
    for name in os.listdir(dyn):
        if DYNLOAD_DROP.match(name):
            os.unlink(os.path.join(dyn, name))
    # Debian docs, man pages, lintian data: not needed to run.
    for d in ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/binfmts",
              "usr/share/applications", "usr/share/pixmaps"):
        shutil.rmtree(os.path.join(stage, d), ignore_errors=True)


def _host_libs(stage):
    """The host libraries every ELF in the stage needs (ELFs needing a missing lib are removed)."""
    libs = set()
    for dirpath, _dirs, filenames in os.walk(os.path.join(stage, "usr")):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or (not os.access(path, os.X_OK) and not name.endswith(".so")):
                continue
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            needed = _ldd(path)
            if needed is None:
                os.unlink(path)        # a C module whose library is not on this host
                continue
            libs.update(needed)
    return sorted(libs)


def _busybox_links(stage):
    bb = os.path.join(stage, "bin", "busybox")
    out = _run([bb, "--list-full"], "busybox --list-full")
    for rel in out.split():
        link = os.path.join(stage, rel)
        if os.path.lexists(link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)


def _stage(root_dirs, modules_dir, agent_root, stage):
    """Assemble the guest's / in ``stage``: packages, host libraries, modules, init, agent."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp",
              "root", "var/lib/hostkv", "var/log", "lib/modules/hostkv-test",
              "usr/lib/hostkv-test", "etc/hostkv/hooks.d"):
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    for d in root_dirs:
        _copy_tree(d, stage)
    # Debian's merged /usr is not in these .debs: busybox lives in /bin.
    _prune_stdlib(stage)
    _busybox_links(stage)
    py = os.path.join(stage, "usr", "bin", "python3")
    if not os.path.lexists(py):
        os.symlink("python" + PYVER, py)
    for lib in _host_libs(stage):
        real = os.path.realpath(lib)
        dst = os.path.join(stage, lib.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            shutil.copy2(real, dst)
    for mod in MODULES:
        shutil.copy2(os.path.join(modules_dir, os.path.basename(mod)),
                     os.path.join(stage, "lib/modules/hostkv-test"))
    shutil.copy2(os.path.join(INIT_DIR, "init"), os.path.join(stage, "init"))
    os.chmod(os.path.join(stage, "init"), 0o755)
    shutil.copy2(os.path.join(INIT_DIR, "exec_server.py"),
                 os.path.join(stage, "usr/lib/hostkv-test/exec_server.py"))
    with open(os.path.join(stage, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(stage, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    if agent_root:
        _copy_tree(agent_root, stage)
    # Precompile with the guest's own interpreter (same magic number, no timestamps needed).
    # The stdlib is shipped as sourceless .pyc (legacy layout, -b) to keep the initramfs small
    # (firmware loads it byte by byte under TCG); everything else keeps its .py next to the .pyc.
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    python = os.path.join(stage, "usr", "bin", "python" + PYVER)
    stdlib = os.path.join(stage, "usr", "lib", "python" + PYVER)
    compile_argv = [python, "-I", "-m", "compileall", "-q", "-j", "0",
                    "--invalidation-mode", "unchecked-hash", "-s", stage, "-p", "/"]
    if STDLIB_SOURCELESS:
        _run(compile_argv + ["-b", stdlib], "precompiling the stdlib", env=env)
        for dirpath, dirnames, filenames in os.walk(stdlib):
            for name in filenames:
                if name.endswith(".py") and os.path.exists(os.path.join(dirpath, name + "c")):
                    os.unlink(os.path.join(dirpath, name))
    _run(compile_argv + ["-x", r"/python%s/" % re.escape(PYVER) if STDLIB_SOURCELESS else "^$",
                         os.path.join(stage, "usr", "lib")], "precompiling .pyc", env=env)


# ---------------------------------------------------------------- PVH kernel

def _has_pvh_note(elf):
    """True if the ELF64 image ``elf`` (bytes) has a Xen PHYS32_ENTRY note (PVH boot)."""
    import struct
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _flags, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", elf,
                                                                  phoff + i * phentsize)
        if ptype != 4:          # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:      # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_pvh_kernel(bzimage, dest):
    """Write the uncompressed vmlinux inside ``bzimage`` to ``dest`` and return True if it can
    be booted directly (PVH entry note).  Under TCG this skips ~3-5 s of firmware + xz
    decompression before the kernel starts; QEMU and libvirt boot it with the same -kernel."""
    import lzma
    with open(bzimage, "rb") as f:
        data = f.read()
    off = data.find(b"\xfd7zXZ\x00")
    if off < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
    except lzma.LZMAError:
        return False
    if not _has_pvh_note(elf):
        return False
    with open(dest, "wb") as f:
        f.write(elf)
    return True


# ---------------------------------------------------------------- the kernel

def _kernel_cache(deb, cache):
    """Unpack what the guest needs from the kernel .deb once: ``vmlinuz``, the PVH ``vmlinux``
    (if USE_PVH and possible), ``modules/*.ko`` (MODULES only), ``release``, ``kernel-name``.
    Shared by all images built from this .deb; the 400 MB dpkg -x tree is not kept."""
    tag = hashlib.sha256(repr((MODULES, USE_PVH, 1)).encode()).hexdigest()[:8]
    kernels = os.path.join(cache, "kernels")
    os.makedirs(kernels, exist_ok=True)
    dest = os.path.join(kernels, "%s-%s" % (os.path.basename(deb)[:-4], tag))
    if os.path.exists(os.path.join(dest, "kernel-name")):
        return dest
    tmp = tempfile.mkdtemp(prefix=".k-", dir=kernels)
    try:
        x = os.path.join(tmp, "x")
        _run(["dpkg", "-x", deb, x], "extracting %s" % os.path.basename(deb))
        vmlinuz = glob.glob(os.path.join(x, "boot", "vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise GuestImageError("expected one vmlinuz in %s, found %r" % (deb, vmlinuz))
        release = os.path.basename(vmlinuz[0])[len("vmlinuz-"):]
        out = os.path.join(tmp, "out")
        os.makedirs(os.path.join(out, "modules"))
        shutil.copy2(vmlinuz[0], os.path.join(out, "vmlinuz"))
        kdir = os.path.join(x, "lib", "modules", release, "kernel")
        for mod in MODULES:
            src = os.path.join(kdir, mod)
            if not os.path.exists(src):
                raise GuestImageError("kernel module %s is not in %s" % (mod, deb))
            shutil.copy2(src, os.path.join(out, "modules"))
        if USE_PVH and extract_pvh_kernel(vmlinuz[0], os.path.join(out, "vmlinux")):
            kernel_name = "vmlinux"
        else:
            kernel_name = "vmlinuz"
        with open(os.path.join(out, "release"), "w") as f:
            f.write(release)
        with open(os.path.join(out, "kernel-name"), "w") as f:
            f.write(kernel_name)
        os.rename(out, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


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


def _builder_hash():
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
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
            from tests.harness.agent_payload import agent_payload_root
            agent_root = str(agent_payload_root())
        elif agent_root == "checkout":
            tmp_agent = tempfile.mkdtemp(prefix="agent-root-", dir=cache)
            agent_root = checkout_agent_root(os.path.join(tmp_agent, "root"))
        elif not os.path.isdir(agent_root):
            raise GuestImageError("agent_root %r is not a directory" % agent_root)

        versions = _resolve_packages(cache)
        debs = [_fetch_deb(p, v, debdir) for p, v in versions]
        kernel_dir = _kernel_cache(debs[0], cache)
        extracted = [None] + [_extract_deb(d, extractdir) for d in debs[1:]]
        with open(os.path.join(kernel_dir, "release")) as f:
            release = f.read().strip()
        with open(os.path.join(kernel_dir, "kernel-name")) as f:
            kernel = os.path.join(kernel_dir, f.read().strip())

        h = hashlib.sha256()
        h.update(("builder %s\n" % _builder_hash()).encode())
        for (p, v), deb in zip(versions, debs):
            h.update(("deb %s %s\n" % (p, v)).encode())
            _sha256_file(deb, h)
        _hash_tree(h, INIT_DIR, "init")
        _hash_tree(h, agent_root, "agent")
        # The host libraries are inputs too: hash the ones the interpreter itself needs
        # (the rest come from the same libc/system and change together with it).
        py = os.path.join(extracted[USER_PACKAGES.index("python3.11-minimal") + 1],
                          "usr", "bin", "python" + PYVER)
        for lib in sorted(_ldd(py) or []):
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
            _stage(extracted[1:], os.path.join(kernel_dir, "modules"), agent_root, stage)
            out = os.path.join(work, "out")
            os.makedirs(out)
            write_cpio(stage, os.path.join(out, "initrd.cpio"),
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
