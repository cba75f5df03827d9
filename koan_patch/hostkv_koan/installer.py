"""Install / uninstall / status of hostkv-koan: exactly one file, ``hostkv_koan.pth``, in koan's
site-packages.  Nothing of koan is touched; uninstall removes that file and nothing else remains.

The ``.pth`` holds one ``import`` line (``site`` runs such lines at interpreter start): if the
hostkv_koan code is still where it was installed from, it is put at the END of sys.path and
:func:`hostkv_koan.hook.activate` registers the import hook; if the code is gone, the line does
nothing (koan then runs stock).  Writes are atomic and durable (hostkv.common.atomic): never a
half-written file.

hostkv's shared code (``hostkv/common/``: the option rule, domain XML, the version) comes from
hostkv's host libraries (``lib_dirs``), the same ones the hook puts on koan's sys.path.
"""

import glob
import importlib.util
import json
import os
import stat
import subprocess
import sys

from hostkv_koan import SUPPORTED_KOAN_VERSIONS

PTH_NAME = "hostkv_koan.pth"
MARKER = "# hostkv-koan"
CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # holds hostkv_koan/
# What koan's wrappers import from hostkv's host libraries: the shared package hostkv.common.
REQUIRED_LIB_FILES = tuple(os.path.join("hostkv", "common", name) for name in (
    "__init__.py", "entries.py", "options.py", "domain_xml.py", "paths.py", "version.py",
    "atomic.py"))
INSTALLED_LIB_DIR = "/usr/lib/hostkv-host"


class InstallError(RuntimeError):
    """Refused or failed install/uninstall; the message says why and what to do."""


class KoanInfo(object):
    """Where koan is (``package_dir``, ``site_dir``) and its ``version`` (None if unknown)."""

    def __init__(self, package_dir, site_dir, version):
        self.package_dir = package_dir
        self.site_dir = site_dir
        self.version = version

    @property
    def supported(self):
        return self.version in SUPPORTED_KOAN_VERSIONS


def find_koan():
    """The koan importable by this interpreter, or raise InstallError."""
    spec = importlib.util.find_spec("koan")
    if spec is None or not spec.submodule_search_locations:
        raise InstallError("koan is not installed for %s (install koan 3.0.1 first)" % sys.executable)
    package_dir = os.path.realpath(list(spec.submodule_search_locations)[0])
    site_dir = os.path.dirname(package_dir)
    return KoanInfo(package_dir, site_dir, koan_version(site_dir))


def koan_version(site_dir):
    """koan's version from its dist-info/egg-info metadata in ``site_dir``, or None."""
    for pattern, meta in (("koan-*.dist-info", "METADATA"), ("koan-*.egg-info", "PKG-INFO"),
                          ("koan-*.egg-info", None)):
        for path in sorted(glob.glob(os.path.join(site_dir, pattern))):
            target = os.path.join(path, meta) if meta else path
            if not os.path.isfile(target):
                continue
            with open(target, errors="replace") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
    return None


def default_lib_dirs():
    """Where hostkv's host code (hostkv/common/, hostkv/protocol.py, ...) lives: the checkout this
    code belongs to; else, for the RPM's <root>/usr/lib/hostkv-koan, its sibling
    <root>/usr/lib/hostkv-host (so an `rpm --root` tree uses its own copy); else /usr/lib/hostkv-host."""
    repo = os.path.dirname(CODE_DIR)
    checkout = [os.path.join(repo, "protocol"), os.path.join(repo, "host_service")]
    if all(os.path.isdir(d) for d in checkout) and _missing_lib_files(checkout) == []:
        return checkout
    sibling = [os.path.join(repo, os.path.basename(INSTALLED_LIB_DIR))]
    if _missing_lib_files(sibling) == []:
        return sibling
    return [INSTALLED_LIB_DIR]


def _missing_lib_files(lib_dirs):
    return [rel for rel in REQUIRED_LIB_FILES
            if not any(os.path.isfile(os.path.join(d, rel)) for d in lib_dirs)]


def unsafe_paths(paths):
    """Which of ``paths`` (or their parent directories) someone other than root / us could change.

    The .pth makes every program run by this Python import code from these places, so they must
    be as trustworthy as the interpreter: owned by root (or the installing user), not writable
    by others, nor by a group other than root's/ours (sticky directories such as /tmp are fine
    as parents).  Returns a list of "path: reason" strings."""
    me_uid, me_gid = os.geteuid(), os.getegid()
    problems, seen = [], set()
    for start in paths:
        path = os.path.abspath(start)
        chain = []
        while True:
            chain.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for i, path in enumerate(chain):
            if path in seen:
                continue
            seen.add(path)
            try:
                st = os.stat(path)
            except OSError as err:
                problems.append("%s: %s" % (path, err.strerror))
                continue
            sticky_parent = i > 0 and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
            if st.st_uid not in (0, me_uid):
                problems.append("%s: owned by uid %d" % (path, st.st_uid))
            elif st.st_mode & stat.S_IWOTH and not sticky_parent:
                problems.append("%s: writable by everyone" % path)
            elif st.st_mode & stat.S_IWGRP and st.st_gid not in (0, me_gid) and not sticky_parent:
                problems.append("%s: writable by group %d" % (path, st.st_gid))
    return problems


def shared(lib_dirs=None):
    """The ``hostkv.common`` package of ``lib_dirs`` (default :func:`default_lib_dirs`), importable
    here: the dirs are appended to sys.path as the hook does in koan."""
    for d in lib_dirs or default_lib_dirs():
        if d not in sys.path:
            sys.path.append(os.path.abspath(d))
    import hostkv.common.atomic
    import hostkv.common.version
    return hostkv.common


def version(lib_dirs=None):
    """hostkv's version (hostkv.common.version), or "unknown" without the host libraries."""
    try:
        return shared(lib_dirs).version.VERSION
    except ImportError:
        return "unknown"


def _code_files(code_dir, lib_dirs):
    files = sorted(glob.glob(os.path.join(code_dir, "hostkv_koan", "*.py")))
    for rel in REQUIRED_LIB_FILES:
        files += [os.path.join(d, rel) for d in lib_dirs if os.path.isfile(os.path.join(d, rel))]
    return files


def pth_path(koan):
    return os.path.join(koan.site_dir, PTH_NAME)


def pth_text(code_dir, lib_dirs, force=False):
    """The exact content of hostkv_koan.pth (its first line names hostkv's version)."""
    return ("%s %s: hostkv channel + Cobbler 3.3 fixes for koan %s. "
            "Remove with: hostkv-koan uninstall\n"
            "import os, sys; p = %r; os.path.isfile(os.path.join(p, 'hostkv_koan', 'hook.py')) and "
            "(p in sys.path or sys.path.append(p) or True) and "
            "__import__('hostkv_koan.hook').hook.activate(%r, force=%r)\n"
            % (MARKER, version(lib_dirs), "/".join(SUPPORTED_KOAN_VERSIONS), code_dir, list(lib_dirs),
               bool(force)))


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def install(force=False, lib_dirs=None, koan=None):
    """Install; returns a one-line message.  Idempotent ("already installed" changes nothing)."""
    koan = koan or find_koan()
    if not koan.supported and not force:
        raise InstallError(
            "koan %s at %s is not a version hostkv-koan supports (%s): its wrappers rely on that "
            "version's internals. Use --force to install anyway."
            % (koan.version or "(unknown version)", koan.package_dir,
               ", ".join(SUPPORTED_KOAN_VERSIONS)))
    lib_dirs = [os.path.abspath(d) for d in (lib_dirs or default_lib_dirs())]
    missing = _missing_lib_files(lib_dirs)
    if missing:
        raise InstallError("hostkv's host code is not found in %s (missing %s): install "
                           "hostkv-host, or pass --lib DIR" % (", ".join(lib_dirs), ", ".join(missing)))
    unsafe = unsafe_paths(_code_files(CODE_DIR, lib_dirs))
    if unsafe:
        raise InstallError("refusing: every program run by %s would import code from places "
                           "others can change: %s" % (sys.executable, "; ".join(unsafe[:5])))
    path = pth_path(koan)
    text = pth_text(CODE_DIR, lib_dirs, force=force and not koan.supported)
    current = _read(path)
    if current == text:
        return "already installed: %s" % path
    if current is not None and not current.startswith(MARKER):
        raise InstallError("%s exists and was not written by hostkv-koan; not touching it" % path)
    shared(lib_dirs).atomic.write_atomic(path, text)
    return "%s %s" % ("updated" if current is not None else "installed", path)


def uninstall(koan=None):
    """Remove hostkv_koan.pth; returns a one-line message.  Idempotent."""
    koan = koan or find_koan()
    path = pth_path(koan)
    current = _read(path)
    if current is None:
        return "not installed (no %s)" % path
    if not current.startswith(MARKER):
        raise InstallError("%s was not written by hostkv-koan; not removing it" % path)
    os.unlink(path)
    return "removed %s" % path


_PROBE = r"""
import json, sys
out = {"hook": False, "wrapped": {}}
try:
    import hostkv_koan.hook as hook
except ImportError:
    hook = None
if hook is not None:
    out["hook"] = any(isinstance(f, hook.KoanFinder) for f in sys.meta_path)
    import importlib
    for modname, entries in hook.WRAPS.items():
        try:
            mod = importlib.import_module(modname)
        except Exception as err:
            for path, piece, _ in entries:
                out["wrapped"]["%s.%s" % (modname, path)] = "import failed: %s" % err
            continue
        for path, piece, _ in entries:
            try:
                _, _, fn = hook._resolve(mod, path)
                out["wrapped"]["%s.%s" % (modname, path)] = (
                    "wrapped" if getattr(fn, hook.MARK, False) else "not wrapped")
            except AttributeError:
                out["wrapped"]["%s.%s" % (modname, path)] = "missing"
sys.stdout.write("HOSTKV-KOAN-PROBE " + json.dumps(out) + "\n")
"""


def status(koan=None, probe=True):
    """A dict: installed, pth, koan_version, supported, code_dir, lib_dirs, active, wrapped.

    ``probe`` starts this interpreter afresh (as koan would be) and imports koan there, to report
    what the hook really wraps (costs ~1 s: importing koan.virtinstall runs virt-install)."""
    from hostkv_koan import hook
    koan = koan or find_koan()
    path = pth_path(koan)
    text = _read(path)
    st = {
        "installed": text is not None and text.startswith(MARKER),
        "pth": path,
        "koan_version": koan.version,
        "koan_dir": koan.package_dir,
        "supported": koan.supported,
        "code_dir": CODE_DIR,
        "pieces": {"%s.%s" % (m, p): piece for m, entries in hook.WRAPS.items()
                   for p, piece, _ in entries},
        "active": False,
        "wrapped": {},
    }
    if st["installed"] and probe:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        res = subprocess.run([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, env=env, timeout=120,
                             cwd="/")
        for line in res.stdout.splitlines():
            if line.startswith("HOSTKV-KOAN-PROBE "):
                data = json.loads(line.split(" ", 1)[1])
                st["active"] = data["hook"]
                st["wrapped"] = data["wrapped"]
        if not st["wrapped"]:
            st["probe_error"] = (res.stderr or res.stdout)[-2000:]
    return st
