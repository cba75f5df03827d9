"""The test guest's state disk: a small ext2 image the guest's init mounts on /var/lib/hostkv.

Contract: ``make_state_disk(path, size_mib=16)`` creates the image with the host's mke2fs (no root
needed) unless ``path`` exists, and returns ``path``; it is written under ``path + ".tmp"`` and
renamed, so a half-made image is never at ``path``.  Failure: :class:`StateDiskError` with
mke2fs's output.
"""

import os
import subprocess


class StateDiskError(RuntimeError):
    """mke2fs failed; the message has its output."""


def make_state_disk(path, size_mib=16):
    """Create an ext2 image at ``path`` (host-side mke2fs; no root needed) if it does not exist."""
    if os.path.exists(path):
        return path
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    res = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-L", "hostkv-state", tmp],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if res.returncode != 0:
        os.unlink(tmp)
        raise StateDiskError("mke2fs %s failed: %s" % (path, res.stdout.decode(errors="replace")))
    os.rename(tmp, path)
    return path
