#!/usr/bin/env bash
# Set up everything (apt packages, .venv) and run hostkv's whole test suite against real components:
# QEMU guests, libvirtd, cobblerd, koan, rpmbuild.  Extra arguments go to pytest.
# Exit status: pytest's; "no tests ran" (pytest's 5) is a failure too.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh || exit 1
# The EL9-like test hosts run libvirt's modular daemons, which Debian builds but does not ship:
# build them once from Debian's source of the installed libvirt (cached; see the script).
bash scripts/build-virtqemud.sh >/dev/null || exit 1
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" = 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2
fi
exit "$rc"
