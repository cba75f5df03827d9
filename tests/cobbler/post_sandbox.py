"""Run a rendered kickstart %post block for real, confined to a sandbox and a scratch root.

:func:`run_post` runs ``bash SCRIPT`` in a private mount namespace (``unshare -m``) where:

* ``/etc`` and ``/root`` are overlays whose writes land in ``<work>/upper-etc`` and
  ``<work>/upper-root`` (the machine's own /etc and /root are never written);
* ``PATH`` starts with ``<work>/bin`` holding two thin adapters that point the snippet's commands at
  the scratch root ``root`` instead of the running machine:

  - ``dnf -y install PKG...`` -> the real ``dnf repoquery --location`` resolves PKG in the repos
    configured in /etc/yum.repos.d (i.e. the hostkv.repo the snippet just wrote, served by
    Cobbler), then the real ``rpm --root ROOT -i --nodeps URL`` installs it.  ``--nodeps`` is the one
    concession: the scratch root's empty rpm database provides neither ``python3`` nor ``/bin/sh``,
    which a real guest's base system does (a plain ``dnf --installroot`` install refuses exactly
    those two requirements; Debian's dnf has no ``download`` plugin).
  - ``systemctl ARGS`` -> the real ``systemctl --root=ROOT ARGS`` (works offline on a directory).

The scratch root gets a static busybox as ``/bin/sh`` so the package's scriptlets really run.
"""

import os
import shutil
import subprocess

DNF_ADAPTER = r"""#!/bin/sh
# adapter: the snippet's "dnf -y install PKG..." into the scratch root (see post_sandbox.py)
echo "dnf $*" >> "%(work)s/calls"
[ "$1" = "-y" ] && [ "$2" = "install" ] || { echo "dnf adapter: unexpected call: $*" >&2; exit 2; }
shift 2
for pkg in "$@"; do
    loc=$(/usr/bin/dnf -q repoquery --location --installroot="%(root)s" --releasever=9 \
          --setopt=reposdir=/etc/yum.repos.d --setopt=cachedir="%(work)s/dnf-cache" "$pkg") || exit 1
    [ -n "$loc" ] || { echo "dnf adapter: no package $pkg in the configured repos" >&2; exit 1; }
    case "$loc" in http://*|https://*|ftp://*)
        command -v curl >/dev/null || { echo "dnf adapter: rpm fetches $loc with curl, which is not" \
            "installed (Debian package curl: scripts/apt-packages.txt)" >&2; exit 1; } ;;
    esac
    /usr/bin/rpm --root "%(root)s" -i --nodeps "$loc" || exit 1
done
"""

SYSTEMCTL_ADAPTER = r"""#!/bin/sh
# adapter: the snippet's "systemctl ..." on the scratch root (see post_sandbox.py)
echo "systemctl $*" >> "%(work)s/calls"
exec /usr/bin/systemctl --root="%(root)s" "$@"
"""

RUNNER = r"""set -e
for d in etc root; do
    mkdir -p "%(work)s/upper-$d" "%(work)s/work-$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=%(work)s/upper-$d,workdir=%(work)s/work-$d" "/$d"
done
set +e
PATH="%(work)s/bin:$PATH" bash "%(work)s/post.sh"
"""


def make_scratch_root(root):
    """An empty root with only /bin/sh (static busybox) for the RPM scriptlets."""
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, os.path.join(root, "bin", "sh"))


def run_post(script, root, work, timeout=180):
    """Run ``script`` (bash text) in the sandbox; returns (CompletedProcess, {"etc": dir, "root": dir})."""
    os.makedirs(os.path.join(work, "bin"), exist_ok=True)
    values = {"work": work, "root": root}
    for name, text in (("dnf", DNF_ADAPTER), ("systemctl", SYSTEMCTL_ADAPTER)):
        path = os.path.join(work, "bin", name)
        with open(path, "w") as f:
            f.write(text % values)
        os.chmod(path, 0o755)
    with open(os.path.join(work, "post.sh"), "w") as f:
        f.write(script)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           RUNNER % values], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout)
    return proc, {"etc": os.path.join(work, "upper-etc"), "root": os.path.join(work, "upper-root")}


def calls(work):
    try:
        with open(os.path.join(work, "calls")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []
