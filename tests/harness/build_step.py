"""One external step of building the test guest image (apt, dpkg, busybox, compileall...).

Contract: ``run_step(argv, what, cwd=None, timeout=600, env=None)`` runs ``argv`` and returns its
stdout (text); if it cannot start, times out or exits non-zero it raises :class:`GuestImageError`
naming ``what``, the command and the tail of its output.  Every image-building module raises
GuestImageError, so a failed build always says which step failed.
"""

import subprocess


class GuestImageError(RuntimeError):
    """A step of the image build failed; the message names the step and its output."""


def run_step(argv, what, cwd=None, timeout=600, env=None):
    try:
        res = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GuestImageError("%s: %s failed: %s" % (what, " ".join(argv), err))
    if res.returncode != 0:
        raise GuestImageError("%s: %s exited %d:\n%s%s" % (
            what, " ".join(argv), res.returncode, res.stdout.decode(errors="replace")[-2000:],
            res.stderr.decode(errors="replace")[-2000:]))
    return res.stdout.decode(errors="replace")
