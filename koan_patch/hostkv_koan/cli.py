"""``hostkv-koan install|uninstall|status`` (see docs/KOAN.md).

Exit status: 0 success (status: installed and active); 1 error or refused (status: installed but
not working); 2 usage; 3 status: not installed.  It acts on the koan of the Python running it;
``--python PATH`` re-runs it under another interpreter (the one koan is installed for).
"""

import argparse
import json
import os
import sys

from hostkv_koan import DISABLE_ENV, installer


def _parser():
    p = argparse.ArgumentParser(prog="hostkv-koan", description=(
        "Teach koan the hostkv channel and per-guest keys, and fix koan 3.0.1 for Cobbler 3.3. "
        "Installs one file (hostkv_koan.pth) next to koan; nothing of koan is modified."))
    p.add_argument("--version", action="version", version="hostkv-koan %s" % installer.version())
    p.add_argument("--python", metavar="PATH",
                   help="act on the koan of this Python interpreter (default: the running one)")
    sub = p.add_subparsers(dest="command")
    inst = sub.add_parser("install", help="install the extension (idempotent)")
    inst.add_argument("--force", action="store_true",
                      help="install even on a koan version hostkv-koan was not written for")
    inst.add_argument("--lib", action="append", metavar="DIR",
                      help="directory holding hostkv/common/ (hostkv's host libraries) "
                           "(repeatable; default: this checkout, else /usr/lib/hostkv-host)")
    sub.add_parser("uninstall", help="remove the extension (idempotent)")
    stat = sub.add_parser("status", help="installed or not, koan version, what is wrapped")
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _reexec(python, argv):
    """Run this same command (sys.argv[0]) under ``python``, without --python."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--python":
            skip = True
        elif not a.startswith("--python="):
            rest.append(a)
    script = os.path.realpath(sys.argv[0])
    os.execv(python, [python, script] + rest)


def _print_status(st):
    print("hostkv-koan %s: %s" % (installer.version(), "installed" if st["installed"] else "not installed"))
    print("  file:  %s%s" % (st["pth"], "" if st["installed"] else " (absent)"))
    print("  koan:  %s at %s (%s)" % (st["koan_version"] or "unknown version", st["koan_dir"],
                                      "supported" if st["supported"] else "NOT a supported version"))
    print("  code:  %s" % st["code_dir"])
    if st["installed"]:
        print("  hook:  %s" % ("active in a fresh interpreter" if st["active"] else "NOT active"))
    off = os.environ.get(DISABLE_ENV)
    if off:
        print("  %s=%s" % (DISABLE_ENV, off))
    print("  wraps:")
    for target, piece in sorted(st["pieces"].items()):
        state = st["wrapped"].get(target, "-") if st["installed"] else "-"
        print("    %-48s %-12s %s" % (target, piece, state))
    if st.get("probe_error"):
        print("  probe failed:\n" + st["probe_error"])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.python:
        # Always re-run: a venv's python and the system's resolve to the same binary but see
        # different site-packages.  The re-run has no --python, so this cannot loop.
        _reexec(args.python, argv)
    if not args.command:
        _parser().print_usage(sys.stderr)
        return 2
    try:
        if args.command == "install":
            print(installer.install(force=args.force, lib_dirs=args.lib))
            return 0
        if args.command == "uninstall":
            print(installer.uninstall())
            return 0
        st = installer.status()
    except installer.InstallError as err:
        sys.stderr.write("hostkv-koan: %s\n" % err)
        return 1
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        _print_status(st)
    if not st["installed"]:
        return 3
    ok = st["active"] and st["wrapped"] and all(
        v == "wrapped" for k, v in st["wrapped"].items()
        if st["pieces"].get(k) not in _disabled())
    return 0 if ok else 1


def _disabled():
    from hostkv_koan.hook import disabled_pieces
    return disabled_pieces()


if __name__ == "__main__":
    sys.exit(main())
