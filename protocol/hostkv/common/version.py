"""The version of hostkv every component reports (``--version``, the protocol's hello, logs).

Contract: ``VERSION`` equals the stripped content of the checkout's top-level ``VERSION`` file,
the one the RPMs get their version from.  packaging/build-rpms.sh refuses to build when they
differ, and tests/unit/test_common.py checks it, so changing the version means editing both
(``python3 -m hostkv.common.version --write`` rewrites this file from VERSION).
"""

VERSION = "0.1.0"


def _write(version_file, module_file):   # pragma: no cover - a maintainer's tool
    with open(version_file) as f:
        version = f.read().strip()
    with open(module_file) as f:
        text = f.read()
    old = 'VERSION = "%s"' % VERSION
    if old not in text:
        raise SystemExit("%s: no line %s" % (module_file, old))
    with open(module_file, "w") as f:
        f.write(text.replace(old, 'VERSION = "%s"' % version, 1))
    print("%s: VERSION = %s" % (module_file, version))


if __name__ == "__main__":   # pragma: no cover
    import os
    import sys
    here = os.path.abspath(__file__)
    if sys.argv[1:] == ["--write"]:
        _write(os.path.join(os.path.dirname(here), "..", "..", "..", "VERSION"), here)
    else:
        print(VERSION)
