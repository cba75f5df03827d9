"""The import hook: wraps koan's functions right after koan's own modules have run.

``activate(lib_dirs)`` is called from the one line of ``hostkv_koan.pth`` at interpreter start.
It only appends a finder to ``sys.meta_path`` (cheap, no import of koan: importing
koan.virtinstall runs virt-install).  When ``koan.app``, ``koan.virtinstall`` or ``koan.qcreate``
is imported later, the finder lets the normal machinery load it and then replaces the functions
in :data:`WRAPS` with wrappers (each marked, so wrapping is idempotent; the original stays in
``__wrapped__``).  ``lib_dirs`` (where ``hostkv/protocol.py`` and ``hostkv/hostkvd/`` live) are
put on ``sys.path`` only then, so processes that never import koan are untouched.

The koan version is checked when its first module is patched: a version hostkv-koan does not
support is left stock (with one line on stderr) unless the extension was installed with --force.

Pieces named in $HOSTKV_KOAN_DISABLE (comma separated: autoinstall, port, filesize, bridge,
hostkv) are left as stock koan has them.  A function koan no longer has is reported on stderr and
skipped (``hostkv-koan status`` lists what is wrapped).
"""

import os
import sys

from hostkv_koan import DISABLE_ENV, PIECES

MARK = "__hostkv_koan__"

# module -> [(attribute path, piece, "hostkv_koan module:factory")]
WRAPS = {
    "koan.app": [
        ("Koan.get_data", "autoinstall", "fixes:wrap_get_data"),
        ("Koan.get_install_tree_from_autoinst", "port", "fixes:wrap_get_install_tree_from_autoinst"),
        ("Koan.calc_virt_filesize2", "filesize", "fixes:wrap_calc_virt_filesize2"),
        ("Koan.virt_net_install", "hostkv", "channel:wrap_virt_net_install"),
    ],
    "koan.virtinstall": [
        ("_sanitize_nics", "bridge", "fixes:wrap_sanitize_nics"),
        ("build_commandline", "hostkv", "channel:wrap_build_commandline"),
    ],
    "koan.qcreate": [
        ("start_install", "hostkv", "channel:wrap_start_install"),
    ],
}

_lib_dirs = []
_settings = {"force": False}
_version_verdict = {}


def disabled_pieces(environ=None):
    """The set of pieces switched off by $HOSTKV_KOAN_DISABLE (unknown names are reported)."""
    raw = (environ if environ is not None else os.environ).get(DISABLE_ENV, "")
    names = set(n.strip() for n in raw.split(",") if n.strip())
    for bad in sorted(names - set(PIECES)):
        sys.stderr.write("hostkv-koan: ignoring unknown piece %r in %s (known: %s)\n"
                         % (bad, DISABLE_ENV, ", ".join(PIECES)))
    return names & set(PIECES)


def _factory(spec):
    modname, func = spec.split(":")
    module = __import__("hostkv_koan." + modname, fromlist=[func])
    return getattr(module, func)


def _resolve(module, path):
    """(owner, attribute name, current value) for a dotted ``path`` inside ``module``."""
    owner = module
    parts = path.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part)
    return owner, parts[-1], getattr(owner, parts[-1])


def _koan_supported(module):
    """Is the koan that ``module`` belongs to a supported version (or were we installed --force)?"""
    site = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
    if site not in _version_verdict:
        from hostkv_koan import SUPPORTED_KOAN_VERSIONS
        from hostkv_koan.installer import koan_version
        version = koan_version(site)
        ok = version in SUPPORTED_KOAN_VERSIONS or _settings["force"]
        if not ok:
            sys.stderr.write("hostkv-koan: koan %s is not a supported version (%s); koan runs "
                             "unmodified (hostkv-koan install --force to wrap it anyway)\n"
                             % (version or "(unknown)", ", ".join(SUPPORTED_KOAN_VERSIONS)))
        _version_verdict[site] = ok
    return _version_verdict[site]


def patch_module(module):
    """Wrap the functions of ``module`` listed in WRAPS; returns [(path, piece, state)]."""
    if not _koan_supported(module):
        return [(path, piece, "unsupported koan") for path, piece, _ in WRAPS.get(module.__name__, ())]
    for d in _lib_dirs:
        if d not in sys.path:
            sys.path.append(d)
    off = disabled_pieces()
    report = []
    for path, piece, spec in WRAPS.get(module.__name__, ()):
        if piece in off:
            report.append((path, piece, "disabled"))
            continue
        try:
            owner, name, current = _resolve(module, path)
        except AttributeError:
            sys.stderr.write("hostkv-koan: %s.%s not found in this koan; not wrapped\n"
                             % (module.__name__, path))
            report.append((path, piece, "missing"))
            continue
        if getattr(current, MARK, False):
            report.append((path, piece, "wrapped"))
            continue
        wrapper = _factory(spec)(current)
        setattr(wrapper, MARK, True)
        setattr(owner, name, wrapper)
        report.append((path, piece, "wrapped"))
    return report


class _PatchingLoader(object):
    """Delegates to the real loader, then patches the freshly executed module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch_module(module)

    def __getattr__(self, name):            # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class KoanFinder(object):
    """sys.meta_path entry that hands the koan modules in WRAPS to :class:`_PatchingLoader`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in WRAPS:
            return None
        spec = None
        for finder in sys.meta_path:            # whoever would have found koan without us
            if finder is self or isinstance(finder, KoanFinder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def activate(lib_dirs=(), force=False):
    """Install the finder once; patch any koan module that is already imported."""
    _settings["force"] = bool(force)
    for d in lib_dirs:
        if d not in _lib_dirs:
            _lib_dirs.append(d)
    if not any(isinstance(f, KoanFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, KoanFinder())
    for name in WRAPS:
        if name in sys.modules:
            patch_module(sys.modules[name])
