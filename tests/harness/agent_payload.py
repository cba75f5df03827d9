"""The hostkv-agent RPM's payload, unpacked, so VM tests run exactly what ships.

    root = agent_payload_root()            # builds the RPMs from the checkout if needed
    root = agent_payload_root(dist_dir)    # or uses the hostkv-agent-*.noarch.rpm in dist_dir

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
