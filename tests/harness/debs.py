"""Debian packages for the test guest: which versions, downloaded once, unpacked once.

Contract:
  * ``resolve_packages(cache, kernel_meta, packages)`` -> ``[(package, version)]``: the kernel
    package ``kernel_meta`` (e.g. linux-image-amd64) depends on, then ``packages``, at apt's
    candidate versions.  apt-cache is slow, so the answer is memoised in ``<cache>/resolved.json``
    for as long as apt's lists and configuration are unchanged; ``apt-get update`` runs once if
    apt knows no candidate.
  * ``fetch_deb(pkg, version, debdir)`` -> the .deb's path in ``debdir`` (``apt-get download``
    into a temp dir, then renamed: never a partial .deb under the final name).
  * ``extract_deb(deb, extractdir)`` -> ``extractdir/<deb name>/``, ``dpkg -x`` once.
  * Failures raise build_step.GuestImageError naming the step.
"""

import glob
import json
import os
import re
import shutil
import tempfile

from tests.harness.build_step import GuestImageError, run_step

_apt_updated = False


def _apt_update():
    global _apt_updated
    if not _apt_updated:
        run_step(["apt-get", "update", "-qq"], "apt-get update", timeout=600)
        _apt_updated = True


def _candidate(pkg):
    """Candidate version of ``pkg`` per apt-cache policy, or None."""
    out = run_step(["apt-cache", "policy", pkg], "apt-cache policy %s" % pkg)
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def _kernel_package(kernel_meta):
    """The linux-image-<release>-amd64 package that ``kernel_meta`` depends on."""
    out = run_step(["apt-cache", "depends", kernel_meta], "apt-cache depends %s" % kernel_meta)
    m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b", out)
    if not m:
        raise GuestImageError("cannot find the kernel package %s depends on:\n%s"
                              % (kernel_meta, out))
    return m.group(1)


def _apt_state():
    """Changes whenever apt's view of candidates can change (lists, preferences, sources)."""
    parts = []
    for path in ("/var/lib/apt/lists", "/etc/apt/preferences.d", "/etc/apt/sources.list.d",
                 "/etc/apt/sources.list", "/etc/apt/preferences"):
        try:
            st = os.stat(path)
            parts.append("%s:%d:%d" % (path, st.st_mtime_ns, st.st_size))
        except OSError:
            parts.append(path + ":-")
    return "|".join(parts)


def resolve_packages(cache, kernel_meta, packages):
    """[(package, version)] for the kernel ``kernel_meta`` depends on, then ``packages``
    (apt-get update once if needed).

    apt-cache is slow (seconds per call on a busy machine), so the answer is memoised in
    ``<cache>/resolved.json`` for as long as apt's lists and configuration are unchanged."""
    memo = os.path.join(cache, "resolved.json")
    state = _apt_state()
    try:
        with open(memo) as f:
            saved = json.load(f)
        if saved.get("state") == state and saved.get("packages") == list(packages):
            return [tuple(pv) for pv in saved["versions"]]
    except (OSError, ValueError):
        pass
    versions = _resolve_packages_with_apt(kernel_meta, packages)
    tmp = memo + ".%d.tmp" % os.getpid()
    with open(tmp, "w") as f:
        json.dump({"state": _apt_state(), "packages": list(packages),
                   "versions": versions}, f)
    os.rename(tmp, memo)
    return versions


def _resolve_packages_with_apt(kernel_meta, packages):
    for attempt in (0, 1):
        try:
            pkgs = [_kernel_package(kernel_meta)] + list(packages)
            versions = [(p, _candidate(p)) for p in pkgs]
        except GuestImageError:
            if attempt:
                raise
            _apt_update()
            continue
        if all(v for _p, v in versions):
            return versions
        if attempt:
            raise GuestImageError("apt has no candidate for: %s"
                                  % ", ".join(p for p, v in versions if not v))
        _apt_update()
    raise AssertionError("unreachable")


def fetch_deb(pkg, version, debdir):
    """Path of ``pkg``_``version``.deb in ``debdir``, downloading it with apt-get if missing."""
    safe = "%s_%s_amd64.deb" % (pkg, version.replace(":", "%3a"))
    dest = os.path.join(debdir, safe)
    if os.path.exists(dest):
        return dest
    tmp = tempfile.mkdtemp(prefix=".dl-", dir=debdir)
    try:
        os.chmod(tmp, 0o755)
        argv = ["apt-get", "download", "-qq", "%s=%s" % (pkg, version)]
        try:
            run_step(argv, "downloading %s" % pkg, cwd=tmp)
        except GuestImageError:
            _apt_update()
            run_step(argv, "downloading %s (after apt-get update)" % pkg, cwd=tmp)
        got = glob.glob(os.path.join(tmp, "*.deb"))
        if len(got) != 1:
            raise GuestImageError("apt-get download %s left %r" % (pkg, got))
        os.rename(got[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def extract_deb(deb, extractdir):
    """dpkg -x ``deb`` once into extractdir/<deb name>/ and return that dir."""
    dest = os.path.join(extractdir, os.path.basename(deb)[:-4])
    if os.path.isdir(dest):
        return dest
    tmp = tempfile.mkdtemp(prefix=".x-", dir=extractdir)
    run_step(["dpkg", "-x", deb, tmp], "extracting %s" % os.path.basename(deb))
    os.rename(tmp, dest)
    return dest

