"""Publish the hostkv RPMs as a yum/dnf repository under Cobbler's web dir, atomically.

Layout under ``<webdir>/pub`` (served at ``http://SERVER/cobbler/pub/``)::

    hostkv -> .hostkv-repo-<fingerprint>    a symlink, the only name clients use
    .hostkv-repo-<fingerprint>/             RPMs + repodata/ (createrepo_c), + .hostkv-source

:func:`publish` builds a new repo in a temp dir beside the live one (``.hostkv-tmp-*``), renames it to
its final name, then swaps the ``hostkv`` symlink with ``rename(2)``: a client sees the old repo or
the new one, never a half-written one.  The fingerprint is a hash of the RPMs' names and contents,
so running it again with the same RPMs changes nothing (idempotent); old repos and leftovers of
interrupted runs are removed afterwards.

A client that read the old ``repomd.xml`` just before the swap then asks for the old metadata files
and RPMs: the new repo therefore also carries the previous repo's ``repodata/*`` files and RPMs
(hard links, not listed in the new metadata; createrepo_c's checksum-named metadata files never
clash) for one generation, so such a client still completes its download.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

LINK_NAME = "hostkv"
REPO_PREFIX = ".hostkv-repo-"
TMP_PREFIX = ".hostkv-tmp-"
SOURCE_FILE = ".hostkv-source"
OWN_FILE = ".hostkv-own"   # the repo's own files (relative), i.e. not carried over


class PublishError(RuntimeError):
    """The repo could not be built or swapped in (the previous repo, if any, stays live)."""


def find_rpms(rpm_dir, pattern):
    """The RPM files to publish (sorted paths); source RPMs are never published."""
    paths = sorted(p for p in glob.glob(os.path.join(rpm_dir, pattern))
                   if os.path.isfile(p) and not p.endswith(".src.rpm"))
    return paths


def fingerprint(paths):
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def publish(rpms, pub_dir, createrepo="createrepo_c"):
    """Make ``<pub_dir>/hostkv`` a repo of exactly ``rpms``; returns (repo_dir, changed: bool)."""
    if not rpms:
        raise PublishError("no RPMs to publish")
    os.makedirs(pub_dir, exist_ok=True)
    link = os.path.join(pub_dir, LINK_NAME)
    final = os.path.join(pub_dir, REPO_PREFIX + fingerprint(rpms))
    changed = False
    if not (os.path.islink(link) and os.readlink(link) == os.path.basename(final)
            and os.path.isfile(os.path.join(final, "repodata", "repomd.xml"))):
        if not os.path.isfile(os.path.join(final, "repodata", "repomd.xml")):
            previous = os.path.realpath(link) if os.path.islink(link) else None
            _build(rpms, pub_dir, final, createrepo, previous)
        _swap_link(link, os.path.basename(final))
        changed = True
    _cleanup(pub_dir, keep=os.path.basename(final))
    return final, changed


def _build(rpms, pub_dir, final, createrepo, previous=None):
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=pub_dir)
    try:
        for path in rpms:
            shutil.copy2(path, os.path.join(tmp, os.path.basename(path)))
        with open(os.path.join(tmp, SOURCE_FILE), "w") as f:
            f.write("".join(os.path.abspath(p) + "\n" for p in rpms))
        try:
            proc = subprocess.run([createrepo, "--quiet", tmp], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
        except OSError as err:
            raise PublishError("cannot run %s: %s" % (createrepo, err))
        if proc.returncode != 0:
            raise PublishError("%s failed (exit %d): %s" % (createrepo, proc.returncode,
                                                            proc.stdout.strip()[-2000:]))
        own = sorted(os.path.basename(p) for p in rpms) + sorted(
            "repodata/" + n for n in os.listdir(os.path.join(tmp, "repodata")))
        with open(os.path.join(tmp, OWN_FILE), "w") as f:
            f.write("".join(n + "\n" for n in own))
        if previous and os.path.isdir(previous):
            _carry_over(previous, tmp)
        os.chmod(tmp, 0o755)   # mkdtemp makes it 0700; the web server must read it
        if os.path.isdir(final):
            shutil.rmtree(final)   # an incomplete repo under the final name (no repomd.xml)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _carry_over(previous, new):
    """Hard-link the previous repo's own RPMs and metadata files into ``new`` where the name is free.

    Only its *own* files (listed in .hostkv-own), so nothing is carried for more than one generation.
    """
    try:
        with open(os.path.join(previous, OWN_FILE)) as f:
            names = [n for n in f.read().splitlines() if n]
    except OSError:
        return
    for rel in names:
        if rel == "repodata/repomd.xml" or rel.startswith("/") or ".." in rel.split("/"):
            continue
        src, dst = os.path.join(previous, rel), os.path.join(new, rel)
        if os.path.isfile(src) and not os.path.lexists(dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _swap_link(link, target):
    """Point ``link`` at ``target`` with one rename(2); a plain directory there is moved aside once
    (into a fresh ``.hostkv-tmp-old-*`` directory, removed by :func:`_cleanup`)."""
    if os.path.isdir(link) and not os.path.islink(link):
        aside = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", dir=os.path.dirname(link))
        os.rename(link, os.path.join(aside, LINK_NAME))
    tmp_link = link + ".hostkv-swap-%d" % os.getpid()
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(target, tmp_link)
    os.rename(tmp_link, link)


def _cleanup(pub_dir, keep):
    for name in os.listdir(pub_dir):
        path = os.path.join(pub_dir, name)
        stale_repo = name.startswith(REPO_PREFIX) and name != keep
        leftover = name.startswith(TMP_PREFIX) or name.startswith(LINK_NAME + ".hostkv-swap-")
        if stale_repo or leftover:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
