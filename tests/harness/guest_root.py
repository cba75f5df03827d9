"""The test guest's root file system, assembled in a staging directory (becomes the initramfs).

Contract: ``stage_root(root_dirs, modules_dir, agent_root, stage)`` fills ``stage`` with: the
unpacked packages ``root_dirs`` (busybox-static, python3.11-minimal, its stdlib) minus what a
headless test guest never uses, busybox's applet links, the host's shared libraries ``ldd``
names for every ELF there (an ELF whose library is missing is dropped), the kernel modules from
``modules_dir``, guest_init/{init,exec_server.py}, /etc/passwd and group, then the agent tree
``agent_root`` overlaid onto / last, all precompiled by the guest's own interpreter (the stdlib
sourceless, unchecked-hash .pyc).  ``ldd(path)`` is the shared-library lookup it uses.
Failures raise build_step.GuestImageError.
"""

import os
import re
import shutil
import subprocess

from tests.harness import guest_kernel
from tests.harness.build_step import run_step

INIT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_init")
PYVER = "3.11"

# Parts of the Python stdlib a headless test guest never uses (saves ~3 MB and boot time).
STDLIB_SOURCELESS = True
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


def ldd(path):
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
            needed = ldd(path)
            if needed is None:
                os.unlink(path)        # a C module whose library is not on this host
                continue
            libs.update(needed)
    return sorted(libs)


def _busybox_links(stage):
    bb = os.path.join(stage, "bin", "busybox")
    out = run_step([bb, "--list-full"], "busybox --list-full")
    for rel in out.split():
        link = os.path.join(stage, rel)
        if os.path.lexists(link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)


def stage_root(root_dirs, modules_dir, agent_root, stage):
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
    for mod in guest_kernel.MODULES:
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
        run_step(compile_argv + ["-b", stdlib], "precompiling the stdlib", env=env)
        for dirpath, dirnames, filenames in os.walk(stdlib):
            for name in filenames:
                if name.endswith(".py") and os.path.exists(os.path.join(dirpath, name + "c")):
                    os.unlink(os.path.join(dirpath, name))
    run_step(compile_argv + ["-x", r"/python%s/" % re.escape(PYVER) if STDLIB_SOURCELESS else "^$",
                         os.path.join(stage, "usr", "lib")], "precompiling .pyc", env=env)

