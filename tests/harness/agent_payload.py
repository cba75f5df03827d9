"""The agent tree as installed in a guest: the hostkv-agent RPM's payload, unpacked, so VM tests
run exactly what ships (or, for quick experiments, the same layout straight from the checkout).

    root = agent_payload_root()            # builds the RPMs from the checkout if needed
    root = agent_payload_root(dist_dir)    # or uses the hostkv-agent-*.noarch.rpm in dist_dir
    checkout_agent_root(dest)              # the checkout's files in the installed layout

``root`` is a directory laid out like the guest's / after installing the RPM (scriptlets not run):
root/usr/sbin/hostkv-agent, root/usr/bin/hostkv, root/usr/lib/hostkv-agent/hostkv/{protocol.py,common/,agent/},
root/usr/lib/systemd/system/hostkv-agent.service, root/usr/lib/udev/rules.d/90-hostkv-agent.rules,
root/usr/lib/tmpfiles.d/hostkv-agent.conf, root/etc/hostkv/hooks.d/, root/var/lib/hostkv/.
(/run/hostkv is a %ghost: not in the payload.)  The wrappers find their lib dir from their own path,
so copying the tree to / of a guest (or running root/usr/sbin/hostkv-agent in place) works.

Cached under <repo>/build/agent-payload/: RPMs per source digest, payloads per RPM digest.  Treat
the returned tree as read-only (copy it into an image).  Safe against concurrent callers.
"""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tests.harness import rpms

CACHE = rpms.REPO / "build" / "agent-payload"
KEEP = 4          # cache entries of each kind kept (newest first); older ones are pruned


def _prune(prefix):
    """Delete all but the KEEP newest ``<prefix>*`` entries of the cache (best effort)."""
    entries = sorted(CACHE.glob(prefix + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(str(old), ignore_errors=True)


def _publish(tmp, final):
    """Move the finished ``tmp`` dir to ``final`` atomically; if another caller won, keep theirs."""
    try:
        os.rename(str(tmp), str(final))
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(str(tmp), ignore_errors=True)
    return final


def _built_dist():
    """A dist dir with RPMs built from the checkout as it is now (rebuilt when sources change)."""
    dist = CACHE / ("rpms-" + rpms.source_digest()[:16])
    if dist.is_dir():
        os.utime(str(dist))                 # recently used: pruned last
        return dist
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".rpms-", dir=str(CACHE)))
    try:
        rpms.build_rpms(tmp)
    except BaseException:
        shutil.rmtree(str(tmp), ignore_errors=True)
        raise
    _publish(tmp, dist)
    _prune("rpms-")
    return dist


def agent_payload_root(dist_dir=None):
    """Path of the unpacked hostkv-agent payload (see the module doc); raises RpmBuildError."""
    dist = Path(dist_dir) if dist_dir is not None else _built_dist()
    rpm = rpms.find_rpms(dist).agent
    digest = hashlib.sha256(rpm.read_bytes()).hexdigest()[:16]
    root = CACHE / ("payload-" + digest)
    if root.is_dir():
        os.utime(str(root))
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".payload-", dir=str(CACHE)))
    try:
        rpms.extract_payload(rpm, tmp)
        os.chmod(str(tmp), 0o755)
    except BaseException:
        shutil.rmtree(str(tmp), ignore_errors=True)
        raise
    _publish(tmp, root)
    _prune("payload-")
    return root


# ---------------------------------------------------------------- from the checkout

def _wrapper_text(name, module):
    """An entry-point script like the RPM's (packaging/wrapper.py.in), for ``name``."""
    template = os.path.join(str(rpms.REPO), "packaging", "wrapper.py.in")
    if os.path.exists(template):
        with open(template) as f:
            text = f.read()
        return (text.replace("@NAME@", name).replace("@MODULE@", module)
                .replace("@LIBDIR@", "hostkv-agent"))
    return ("#!/usr/bin/python3 -s\nimport runpy, sys\nsys.path[0:1] = ['/usr/lib/hostkv-agent']\n"
            "runpy.run_module(%r, run_name='__main__', alter_sys=False)\n" % module)


def checkout_agent_root(dest):
    """Lay the agent out under ``dest`` as installed, from this checkout; return ``dest``.

    usr/lib/hostkv-agent/hostkv/protocol.py  <- protocol/hostkv/protocol.py
    usr/lib/hostkv-agent/hostkv/common/      <- protocol/hostkv/common/ (the shared rules)
    usr/lib/hostkv-agent/hostkv/agent/       <- guest_agent/hostkv/agent/ (if it exists yet)
    usr/bin/hostkv, usr/sbin/hostkv-agent    <- guest_agent/bin/<name>, else generated from
                                                packaging/wrapper.py.in like the RPM does
    """
    lib = os.path.join(dest, "usr", "lib", "hostkv-agent", "hostkv")
    os.makedirs(lib)
    shutil.copy2(os.path.join(str(rpms.REPO), "protocol", "hostkv", "protocol.py"), lib)
    shutil.copytree(os.path.join(str(rpms.REPO), "protocol", "hostkv", "common"), os.path.join(lib, "common"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    agent_src = os.path.join(str(rpms.REPO), "guest_agent", "hostkv", "agent")
    has_agent = os.path.isfile(os.path.join(agent_src, "__init__.py")) or \
        os.path.isfile(os.path.join(agent_src, "__main__.py"))
    if has_agent:
        shutil.copytree(agent_src, os.path.join(lib, "agent"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name, module, bindir in (("hostkv", "hostkv.agent.cli", "bin"),
                                     ("hostkv-agent", "hostkv.agent", "sbin")):
            target = os.path.join(dest, "usr", bindir, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = os.path.join(str(rpms.REPO), "guest_agent", "bin", name)
            if os.path.isfile(src):
                shutil.copy2(src, target)
            else:
                with open(target, "w") as f:
                    f.write(_wrapper_text(name, module))
            os.chmod(target, 0o755)
    return dest
