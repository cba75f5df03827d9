"""Install hostkv-agent into a guest root THE WAY A KICKSTART DOES: Cobbler renders, %post runs.

    server = start_cobbler_with_hostkv(workdir, rpm_dir)       # real cobblerd 3.3.10 + hostkv plugin
    ks = render_kickstart(server, PROFILE)                     # `cobbler profile get-autoinstall`
    result = run_post_in_root(post_section(ks), root, work)    # PostResult(rc, output, calls, logs)

* :func:`start_cobbler_with_hostkv` starts a :class:`CobblerServer`, installs hostkv's Cobbler
  plugin with its real installer, points ``/etc/hostkv/cobbler.conf`` at ``rpm_dir`` (the RPMs of
  ``make rpms``), restarts cobblerd, adds a distro (placeholder kernel/initrd: nothing boots it)
  and the profile PROFILE (``sample_hostkv.ks``, ``autoinstall_meta hostkv_enabled=1``) and runs
  ``cobbler sync``, whose hostkv trigger publishes the agent repo at /cobbler/pub/hostkv/.
* :func:`run_post_in_root` runs the WHOLE chroot ``%post`` section the way anaconda does: chrooted
  into ``root`` (private mount namespace with /proc, /sys, /dev and an empty tmpfs /run, so no
  systemd is running there, like an installer's chroot), network = this machine's loopback
  (Cobbler's HTTP front), interpreter bash (EL's /bin/sh is bash; Debian's is dash).
  The one adapter: ``dnf`` on PATH is tests/harness/kickstart_dnf_adapter.py (Debian has no dnf
  that can solve against a dpkg-installed base); it resolves the package in the repo the %post
  configured and installs it with the root's real ``rpm -i --nodeps``.  ``systemctl`` is the
  root's real one (offline, as in any chroot).
"""

import collections
import os
import re
import shutil
import subprocess

from tests.harness.cobbler_server import CobblerServer, HarnessError

HERE = os.path.dirname(os.path.abspath(__file__))
DNF_ADAPTER = os.path.join(HERE, "kickstart_dnf_adapter.py")
DISTRO = "realos-distro"
PROFILE = "realos-hostkv"
TREE = "http://127.0.0.1/hostkv-realos-tree"     # the sample kickstart's `url --url=$tree`

PostResult = collections.namedtuple("PostResult", "rc output calls ks_post_log install_log")


def start_cobbler_with_hostkv(workdir, rpm_dir):
    """A started CobblerServer with hostkv's plugin, publishing ``rpm_dir``, and PROFILE."""
    from tests.cobbler.cobbler_setup import installer
    server = CobblerServer(workdir=workdir)
    server.start()
    try:
        proc = installer(server, "install")
        if proc.returncode != 0:
            raise HarnessError("hostkv-cobbler install failed:\n%s%s" % (proc.stdout, proc.stderr))
        os.makedirs(server.path("/etc/hostkv"), exist_ok=True)
        with open(server.path("/etc/hostkv/cobbler.conf"), "w") as f:
            f.write("# tests/harness/kickstart_post.py\nrpm_dir = %s\n" % rpm_dir)
        server.restart()
        boot = os.path.join(workdir, "boot")
        os.makedirs(boot, exist_ok=True)
        for name in ("vmlinuz", "initrd.img"):
            with open(os.path.join(boot, name), "w") as f:
                f.write("placeholder: the real-OS guest is not installed from this distro\n")
        server.cli(["distro", "add", "--name=" + DISTRO, "--arch=x86_64", "--breed=redhat",
                    "--os-version=rhel9", "--kernel=" + os.path.join(boot, "vmlinuz"),
                    "--initrd=" + os.path.join(boot, "initrd.img"), "--autoinstall-meta=tree=" + TREE])
        server.cli(["profile", "add", "--name=" + PROFILE, "--distro=" + DISTRO,
                    "--autoinstall=sample_hostkv.ks", "--autoinstall-meta=hostkv_enabled=1"])
        sync = server.cli(["sync"])
        if "hostkv: published" not in sync.stdout and "hostkv: unchanged" not in sync.stdout:
            raise HarnessError("cobbler sync did not publish the agent repo:\n" + sync.stdout)
    except BaseException:
        server.stop()
        raise
    return server


def render_kickstart(server, profile=PROFILE):
    return server.cli(["profile", "get-autoinstall", "--name=" + profile]).stdout


def post_section(ks):
    """The body of the (one, chroot) ``%post`` section of a rendered kickstart."""
    sections = re.findall(r"^%post\b([^\n]*)\n(.*?)^%end", ks, re.S | re.M)
    chroot = [body for opts, body in sections if "--nochroot" not in opts]
    if len(chroot) != 1:
        raise HarnessError("expected one chroot %%post section, found %d in:\n%s" % (len(chroot), ks))
    return chroot[0]


_RUNNER = r"""set -e
R="$1"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mkdir -p "$R/run/hostkv-ks/bin"
cp "$2" "$R/run/hostkv-ks/bin/dnf"
chmod 0755 "$R/run/hostkv-ks/bin/dnf"
cp "$3" "$R/run/hostkv-ks/post.sh"
set +e
chroot "$R" /usr/bin/env -i PATH=/run/hostkv-ks/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 TERM=dumb /bin/bash /run/hostkv-ks/post.sh
rc=$?
cat "$R/run/hostkv-ks/calls" > "$4" 2>/dev/null
exit $rc
"""


def run_post_in_root(script, root, work, timeout=300):
    """Run the %post ``script`` chrooted into ``root`` (see the module docstring)."""
    os.makedirs(work, exist_ok=True)
    post = os.path.join(work, "post.sh")
    with open(post, "w") as f:
        f.write(script)
    calls_file = os.path.join(work, "calls")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           _RUNNER, "runner", root, DNF_ADAPTER, post, calls_file],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)

    def read(rel):
        try:
            with open(os.path.join(root, rel.lstrip("/")), errors="replace") as f:
                return f.read()
        except OSError:
            return None
    try:
        with open(calls_file) as f:
            calls = f.read().splitlines()
    except OSError:
        calls = []
    return PostResult(proc.returncode, proc.stdout, calls, read("/root/ks-post.log"),
                      read("/root/hostkv-install.log"))


def rpm_in_root(root, *args):
    """``rpm ARGS`` with the root's own rpm and database (chroot); CompletedProcess."""
    return subprocess.run(["chroot", root, "rpm"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


def stop(server):
    if server is not None:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
