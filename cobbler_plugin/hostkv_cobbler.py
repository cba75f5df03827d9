"""hostkv-cobbler: install, uninstall or check hostkv's Cobbler 3.3 modules and kickstart snippets.

Usage::

    hostkv-cobbler install   [--root DIR] [--settings PATH] [--cobbler-dir DIR]
    hostkv-cobbler uninstall [--root DIR] [--settings PATH] [--cobbler-dir DIR]
    hostkv-cobbler status    [--root DIR] [--settings PATH] [--cobbler-dir DIR]

Run it with the Python that runs cobblerd (the wrapper ``bin/hostkv-cobbler`` picks it).  It places:

* the trigger modules in ``<cobbler package>/modules/hostkv/`` (Cobbler loads modules only from its
  own package directory, located by importing ``cobbler``; ``--cobbler-dir`` overrides), with a
  private copy of hostkv's shared rules, the package ``hostkv/common/``, as
  ``modules/hostkv/_lib/common/`` (the validators check options with it);
* the snippet ``hostkv_agent`` in ``autoinstall_snippets_dir`` and the sample template
  ``sample_hostkv.ks`` in ``autoinstall_templates_dir``, both read from Cobbler's settings
  (``/etc/cobbler/settings.yaml`` and its ``include`` files; ``--settings`` overrides);
* a manifest ``/var/lib/hostkv-cobbler/manifest.json`` listing every file it wrote (with its sha256)
  and every directory it created, so ``uninstall`` removes exactly those (plus the ``__pycache__``
  Python made inside directories it created) and ``status`` can tell intact/modified/missing.

An admin's edit is never lost, with rpm's rules for its two kinds of files (``install`` runs again
from the package's %posttrans on every upgrade):

* the snippet and the template are configuration (like ``%config(noreplace)``; Fedora's cobbler
  package treats Cobbler's own snippets so): one that differs from what hostkv last installed there
  (or that was there before hostkv) is kept; if this version ships a different one, it is written
  beside it as ``FILE.rpmnew``, and ``install`` says so on stdout.  Once the admin merges (or deletes theirs),
  the next ``install`` takes over again and removes the ``.rpmnew``;
* modules are code (like a plain ``%config``): an edited module is replaced, and the admin's copy
  kept as ``FILE.rpmsave`` (not a ``.py``: Cobbler does not load it), said on stdout;
* ``uninstall`` keeps an edited file as ``FILE.rpmsave`` (and a file that was there before hostkv
  where it is), says so, and removes the ``.rpmnew`` files it wrote.

``--root DIR`` prefixes every target path (settings file, Cobbler dirs, manifest), for packaging and
tests; the manifest records paths without the prefix.  Files are written atomically and durably
(``hostkv/common/atomic.py``) and only when their content changed, so ``install`` is idempotent;
files of an earlier install that are no longer shipped are removed.  cobblerd must be restarted
to (un)load modules.

Exit status: 0 success (status: installed and intact), 1 error (status: modified or missing files),
3 (status only) not installed.
"""

import argparse
import glob
import hashlib
import importlib.util
import json
import os
import sys
import types

# Sources: the checkout (<repo>/cobbler_plugin/ = HERE, <repo>/kickstart_snippets/, <repo>/protocol/)
# or the hostkv-cobbler RPM, which puts all of them under HERE = /usr/share/hostkv-cobbler/.
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODULES_SRC = os.path.join(HERE, "modules", "hostkv")
SNIPPETS_SRC = next((d for d in (os.path.join(HERE, "kickstart_snippets"),
                                 os.path.join(REPO, "kickstart_snippets")) if os.path.isdir(d)),
                    os.path.join(REPO, "kickstart_snippets"))
COMMON_SOURCES = (os.path.join(HERE, "protocol", "hostkv", "common"),
                  os.path.join(REPO, "protocol", "hostkv", "common"),
                  "/usr/lib/hostkv-host/hostkv/common",
                  "/usr/lib/hostkv-agent/hostkv/common")
MANIFEST = "/var/lib/hostkv-cobbler/manifest.json"
SETTINGS = "/etc/cobbler/settings.yaml"
SNIPPET_NAME = "hostkv_agent"
TEMPLATE_NAME = "sample_hostkv.ks"
RESTART_HINT = "restart cobblerd to (un)load the hostkv modules: systemctl restart cobblerd"


class InstallError(RuntimeError):
    """Something the user must fix; the message says what."""


# ---------------------------------------------------------------- locating Cobbler

def _reroot(root, path):
    return os.path.join(root, path.lstrip("/")) if root else path


def read_settings(path, root=""):
    """Cobbler's settings (settings.yaml, then its ``include`` globs) as a dict."""
    settings = _load_yaml(path)
    includes = settings.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    for pattern in includes:
        for extra in sorted(glob.glob(_reroot(root, pattern))):
            settings.update(_load_yaml(extra))
    return settings


def _load_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise InstallError("cannot read Cobbler's settings %s: %s (use --settings)" % (path, err))
    try:
        import yaml  # Cobbler depends on PyYAML, so Cobbler's Python has it
    except ImportError:
        return _flat_settings(text)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise InstallError("%s is not valid YAML: %s" % (path, err))
    if not isinstance(data, dict):
        raise InstallError("%s: expected a mapping of settings" % path)
    return data


def _flat_settings(text):
    """Top-level ``key: value`` scalars (for a Python without PyYAML)."""
    out = {}
    for line in text.splitlines():
        if line[:1].isalpha() and ":" in line:
            key, value = line.split(":", 1)
            value = value.split(" #", 1)[0].strip().strip("\"'")
            if value:
                out[key.strip()] = value
    return out


def cobbler_package_dir():
    spec = importlib.util.find_spec("cobbler")
    if spec is None or not spec.origin:
        raise InstallError("Cobbler is not importable by %s: run hostkv-cobbler with the Python "
                           "that runs cobblerd, or pass --cobbler-dir" % sys.executable)
    return os.path.dirname(spec.origin)


def _common_source():
    """The directory of hostkv's shared package (hostkv/common/) this installer ships."""
    for path in COMMON_SOURCES:
        if os.path.isfile(os.path.join(path, "__init__.py")):
            return path
    raise InstallError("hostkv/common/ not found (looked in %s)" % ", ".join(COMMON_SOURCES))


def _shared_module(name):
    """hostkv/common/<name>.py loaded by path (a stand-alone module): no hostkv on sys.path, and no
    bytecode written into the package's (RPM-owned) source dir."""
    path = os.path.join(_common_source(), name + ".py")
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    module = types.ModuleType("hostkv_cobbler_%s" % name)
    module.__file__ = path
    exec(code, module.__dict__)
    return module


CODE, CONFIG = "code", "config"


def plan(args):
    """[(source file, target path without root, CODE or CONFIG)] for this installation."""
    settings = read_settings(args.settings or _reroot(args.root, SETTINGS), args.root)
    for key in ("autoinstall_snippets_dir", "autoinstall_templates_dir"):
        if not isinstance(settings.get(key), str) or not settings[key].startswith("/"):
            raise InstallError("Cobbler's settings have no absolute %s" % key)
    cobbler_dir = args.cobbler_dir or cobbler_package_dir()
    modules_dst = os.path.join(cobbler_dir, "modules", "hostkv")
    files = []
    for dirpath, dirnames, filenames in os.walk(MODULES_SRC):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                src = os.path.join(dirpath, name)
                files.append((src, os.path.join(modules_dst, os.path.relpath(src, MODULES_SRC)), CODE))
    common = _common_source()
    for name in sorted(os.listdir(common)):
        if name.endswith(".py"):
            files.append((os.path.join(common, name),
                          os.path.join(modules_dst, "_lib", "common", name), CODE))
    files.append((os.path.join(SNIPPETS_SRC, SNIPPET_NAME),
                  os.path.join(settings["autoinstall_snippets_dir"], SNIPPET_NAME), CONFIG))
    files.append((os.path.join(SNIPPETS_SRC, TEMPLATE_NAME),
                  os.path.join(settings["autoinstall_templates_dir"], TEMPLATE_NAME), CONFIG))
    return files


# ---------------------------------------------------------------- file operations

def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _digest_or_none(path):
    return _sha256(path) if os.path.isfile(path) else None


def _say(text):
    print("hostkv-cobbler: %s" % text)


def _makedirs(path, created):
    """mkdir -p, appending every directory it had to create to ``created`` (outermost first)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        created.append(d)


def load_manifest(root):
    path = _reroot(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise InstallError("manifest %s is damaged: %s" % (path, err))
    if not isinstance(data.get("files"), dict) or not isinstance(data.get("dirs"), list):
        raise InstallError("manifest %s is damaged: no files/dirs lists" % path)
    data.setdefault("rpmnew", {})       # manifests of earlier versions have none
    return data


def install(args):
    """Install or refresh every planned file (see the module docstring for an admin's edits).

    Manifest: ``files`` maps each target to the sha256 of what hostkv installed there (None: a
    file that was there before hostkv and is kept), ``rpmnew`` each ``.rpmnew`` written to its
    sha256, ``dirs`` the directories created."""
    atomic = _shared_module("atomic")
    old = load_manifest(args.root) or {"files": {}, "dirs": [], "rpmnew": {}}
    dirs = list(old["dirs"])
    files, rpmnew = {}, {}
    changed = 0
    for src, dst, kind in plan(args):
        with open(src, "rb") as f:
            data = f.read()
        target = _reroot(args.root, dst)
        created = []
        _makedirs(os.path.dirname(target), created)
        dirs.extend(_unroot(args.root, d) for d in created if _unroot(args.root, d) not in dirs)
        new = hashlib.sha256(data).hexdigest()
        ours = old["files"].get(dst)              # what we installed there last time
        current = _digest_or_none(target)
        if current is None or current == new or (ours is not None and current == ours):
            if current != new:
                atomic.write_atomic(target, data)
                changed += 1
            files[dst] = new
        elif kind == CONFIG and new == ours:
            files[dst] = ours           # an edit, and ours did not change: theirs stays (rpm: quiet)
        elif kind == CONFIG:
            # the admin's edit (or their own file of that name): theirs stays, ours goes beside it
            files[dst] = ours
            side = dst + ".rpmnew"
            if _digest_or_none(_reroot(args.root, side)) != new:
                atomic.write_atomic(_reroot(args.root, side), data)
                changed += 1
            rpmnew[side] = new
            _say("kept your edited %s; the new version is %s (merge it into yours or replace yours "
                 "with it, then run hostkv-cobbler install again)" % (dst, side))
        else:
            os.replace(target, target + ".rpmsave")
            atomic.write_atomic(target, data)
            changed += 1
            files[dst] = new
            _say("%s had been edited: saved it as %s.rpmsave and installed the new version"
                 % (dst, dst))
    # .rpmnew files of earlier runs that are not needed any more (the admin merged)
    for side, digest in old["rpmnew"].items():
        if side not in rpmnew and _digest_or_none(_reroot(args.root, side)) == digest:
            os.unlink(_reroot(args.root, side))
            _say("removed %s (yours now matches it, or is gone)" % side)
    removed = 0
    for dst, digest in old["files"].items():
        if dst not in files:
            removed += _retire(args.root, dst, digest)
    manifest_path = _reroot(args.root, MANIFEST)
    created = []
    _makedirs(os.path.dirname(manifest_path), created)
    dirs.extend(_unroot(args.root, d) for d in created if _unroot(args.root, d) not in dirs)
    atomic.write_atomic(manifest_path, (json.dumps({"files": files, "dirs": dirs, "rpmnew": rpmnew},
                                                   indent=1, sort_keys=True) + "\n").encode("utf-8"))
    _say("installed %d files (%d written, %d removed); manifest %s"
         % (len(files), changed, removed, manifest_path))
    _say(RESTART_HINT)
    return 0


def _retire(root, dst, digest):
    """Take one installed file away: removed if it is what hostkv installed, kept as .rpmsave if
    an admin edited it, left alone if it was there before hostkv.  Returns 1 if it was removed."""
    target = _reroot(root, dst)
    if not os.path.lexists(target):
        return 0
    if digest is not None and _digest_or_none(target) == digest:
        os.unlink(target)
        return 1
    if digest is None:
        _say("left %s in place (it was there before hostkv)" % dst)
        return 0
    os.replace(target, target + ".rpmsave")
    _say("kept your edited %s as %s.rpmsave" % (dst, dst))
    return 0


def _unroot(root, path):
    if not root:
        return path
    return "/" + os.path.relpath(path, root)


def uninstall(args):
    manifest = load_manifest(args.root)
    if manifest is None:
        print("hostkv-cobbler: not installed (no %s); nothing to do" % _reroot(args.root, MANIFEST))
        return 0
    removed = 0
    for dst, digest in sorted(manifest["files"].items()):
        removed += _retire(args.root, dst, digest)
    for side in sorted(manifest["rpmnew"]):
        if os.path.lexists(_reroot(args.root, side)):
            os.unlink(_reroot(args.root, side))
    os.unlink(_reroot(args.root, MANIFEST))
    kept = []
    for d in sorted(manifest["dirs"], key=len, reverse=True):   # deepest first
        target = _reroot(args.root, d)
        cache = os.path.join(target, "__pycache__")
        if os.path.isdir(cache):
            for name in os.listdir(cache):
                os.unlink(os.path.join(cache, name))
            os.rmdir(cache)
        try:
            os.rmdir(target)
        except FileNotFoundError:
            pass
        except OSError:
            kept.append(target)   # someone else put files there: leave it
    print("hostkv-cobbler: removed %d files" % removed)
    for d in kept:
        print("hostkv-cobbler: kept %s (not empty: holds files hostkv did not install)" % d)
    print("hostkv-cobbler: %s" % RESTART_HINT)
    return 0


def status(args):
    """Each installed file ok/modified/missing; exit 0 intact, 1 not intact, 3 not installed.
    ``--json``: one object (``installed``, ``intact``, ``version``, ``files``: path, state, and
    the ``.rpmnew`` beside it or null), with the same exit status."""
    manifest = load_manifest(args.root)
    version = _shared_module("version").VERSION
    if manifest is None:
        if args.json:
            _print_json({"installed": False, "intact": False, "version": version, "files": []})
        else:
            print("hostkv-cobbler: not installed")
        return 3
    bad = 0
    files = []
    for dst, digest in sorted(manifest["files"].items()):
        target = _reroot(args.root, dst)
        if not os.path.isfile(target):
            state = "missing"
        elif _sha256(target) != digest:
            state = "modified"
        else:
            state = "ok"
        bad += state != "ok"
        side = dst + ".rpmnew"
        files.append({"path": dst, "state": state, "rpmnew": side if side in manifest["rpmnew"] else None})
    if args.json:
        _print_json({"installed": True, "intact": not bad, "version": version, "files": files})
        return 1 if bad else 0
    for f in files:
        print("%-8s %s%s" % (f["state"], f["path"], " (kept; the new version is %s)" % f["rpmnew"]
                                                    if f["rpmnew"] else ""))
    print("hostkv-cobbler: installed, %s" % ("intact" if not bad else "%d files not intact" % bad))
    return 1 if bad else 0


def _print_json(obj):
    print(json.dumps(obj, indent=2, sort_keys=True))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hostkv-cobbler", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("install", "uninstall", "status"))
    parser.add_argument("--root", default="", help="prefix for every target path (DESTDIR)")
    parser.add_argument("--settings", help="Cobbler's settings.yaml (default %s under --root)"
                        % SETTINGS)
    parser.add_argument("--cobbler-dir", help="Cobbler's package dir (default: import cobbler)")
    parser.add_argument("--json", action="store_true", help="status: print one JSON object")
    args = parser.parse_args(argv)
    if args.json and args.action != "status":
        parser.error("--json goes with status")
    if args.root:
        args.root = os.path.abspath(args.root)
    try:
        return {"install": install, "uninstall": uninstall, "status": status}[args.action](args)
    except (InstallError, OSError) as err:
        print("hostkv-cobbler: error: %s" % err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
