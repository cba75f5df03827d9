"""Helpers shared by tests/packaging: subprocess runs, rpm queries, scratch-root installs, private
mount namespaces.  Nothing here touches the machine's own rpm database or /usr, /etc.

    run(cmd)                    subprocess.run, text output, AssertionError with output on rc != 0
    rpmq(*args)                 stdout of `rpm ARGS`
    file_list / file_flags / requires / scriptlets (rpm)   header queries of an .rpm file
    rpm_root(root, *args)       rpm against a scratch root (own db; -i/-U/-e with --nodeps)
    unshare_sh(script)          sh -ec SCRIPT in a private mount namespace
    clean_env()                 environment without PYTHON*, PATH=/usr/sbin:/usr/bin:/sbin:/bin
    py_files(top)               sorted relative paths of *.py under top (no caches)
    parse_unit(path)            {(section, key): [values]} of a systemd unit
    build(dist, release)        build-rpms.sh -> Built(agent, host, srpm, cobbler, cobbler_srpm)
"""
import collections
import os
import subprocess
from pathlib import Path

from tests.harness import rpms as rpmh


def run(cmd, timeout=60, check=True, **kw):
    """subprocess.run with text output; raises with the output when ``check`` and rc != 0."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError("%s -> rc %d\nstdout:\n%s\nstderr:\n%s"
                             % (cmd, proc.returncode, proc.stdout, proc.stderr))
    return proc


def rpmq(*args):
    return run(["rpm"] + list(args)).stdout


def file_list(rpm):
    return set(rpmq("-qlp", str(rpm)).split())


def file_flags(rpm):
    """{path: fflags string} e.g. 'cn' for %config(noreplace), 'g' for %ghost, 'd' for %doc."""
    out = rpmq("-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", str(rpm))
    flags = {}
    for line in out.splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2:
            flags[parts[1]] = parts[0]
        else:
            flags[parts[0]] = ""
    return flags


def requires(rpm):
    return [r.strip() for r in rpmq("-qp", "--requires", str(rpm)).splitlines() if r.strip()]


def scriptlets(rpm):
    """{'%post': body, ...} from the RPM header."""
    out = {}
    for tag, name in (("POSTIN", "%post"), ("PREUN", "%preun"), ("POSTUN", "%postun"),
                      ("PREIN", "%pre"), ("POSTTRANS", "%posttrans")):
        body = rpmq("-qp", "--qf", "%%{%s}" % tag, str(rpm))
        out[name] = "" if body == "(none)" else body
    return out


def rpm_root(root, *args, check=True):
    """rpm against a scratch root (its own database inside it); installs/erasures with --nodeps."""
    nodeps = ["--nodeps"] if set(args) & {"-i", "-U", "-e"} else []
    return run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm"] + nodeps + list(args),
               check=check, timeout=120)


def unshare_sh(script, timeout=60):
    """Run ``script`` with sh in a private mount namespace (mounts vanish with it)."""
    return run(["unshare", "-m", "--propagation", "private", "sh", "-ec", script],
               timeout=timeout, check=False)


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONDONTWRITEBYTECODE"] = "1"      # leave the installed tree as rpm wrote it
    return env


def py_files(top):
    top = Path(top)
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*.py")
                  if "__pycache__" not in p.parts)


def parse_unit(path):
    """{(section, key): [values]} of a systemd unit file (keys may repeat)."""
    units, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        units.setdefault((section, key.strip()), []).append(value.strip())
    return units


Built = collections.namedtuple("Built", "agent host srpm cobbler cobbler_srpm")


def build(dist, release, srcdir=None):
    """build-rpms.sh into ``dist``: the hostkv RpmSet plus the hostkv-cobbler RPM and SRPM."""
    rpms = rpmh.build_rpms(dist, release=release, srcdir=srcdir)
    found = []
    for pattern in ("hostkv-cobbler-*.noarch.rpm", "hostkv-cobbler-*.src.rpm"):
        hits = sorted(Path(dist).glob(pattern))
        assert len(hits) == 1, "%s: expected one %s, found %s" % (dist, pattern, hits)
        found.append(hits[0])
    return Built(rpms.agent, rpms.host, rpms.srpm, *found)
