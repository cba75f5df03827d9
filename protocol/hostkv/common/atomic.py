"""The one way hostkv replaces a file: atomically, and (by default) durably.

Contract of :func:`write_atomic(path, data, mode=0o644, durable=True)`:

* **Atomic**: readers see the old file or the new one, never a mix or a partial file.  The data
  goes to a temp file in the same directory, ``.<name>.XXXXXXXX`` (8 random hex digits), created
  exclusively (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600: no name race, what ``tempfile.mkstemp``
  does, without importing tempfile - shutil, random, bz2, lzma: ~8 ms on a host, far more in a TCG
  guest's agent start), gets ``mode`` (fchmod, so the umask does not matter) and is then
  ``rename(2)``-d over ``path``.  The directory must be on one filesystem
  with ``path`` (it is: same directory); ``path`` itself must not be a symlink to elsewhere (it is
  replaced by a regular file).
* **Durable** (``durable=True``): the temp file is fsync-ed before the rename and the directory
  after it, so once write_atomic returns the new content survives a crash or power loss.
  ``durable=False`` skips both fsyncs: still atomic for every reader while the machine runs, but a
  crash may bring back the old content (for files that are regenerated anyway).
* **On failure** (OSError, or anything raised while writing) the temp file is removed and
  ``path`` is untouched; the exception propagates.  A writer killed between mkstemp and rename
  leaves its temp file behind: :func:`remove_stale_temps` removes such leftovers of ``path``
  (call it only where one writer owns the file, e.g. hostkvd's config, which hostkvctl edits
  through hostkvd).
* ``data`` is bytes, or str (written as UTF-8).  ``makedirs=True`` creates missing parent
  directories (0755) first.
"""

import binascii
import errno
import os

TEMP_RANDOM_CHARS = 8     # random hex digits after the prefix
_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
           | getattr(os, "O_CLOEXEC", 0))


def temp_prefix(path):
    """The prefix of ``path``'s temp files: ``.<basename>.``"""
    return ".%s." % os.path.basename(path)


def _create_temp(directory, prefix):
    """``(fd, path)`` of a new, exclusively created temp file ``prefix`` + 8 hex digits."""
    for _attempt in range(100):
        path = os.path.join(directory, prefix + binascii.hexlify(os.urandom(TEMP_RANDOM_CHARS // 2)).decode())
        try:
            return os.open(path, _CREATE, 0o600), path
        except OSError as err:
            if err.errno != errno.EEXIST:
                raise
    raise OSError(errno.EEXIST, "no free temp file name", os.path.join(directory, prefix + "*"))


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, mode=0o644, durable=True, makedirs=False):
    """Replace ``path`` with ``data`` (see the module contract).  Raises OSError."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = _create_temp(directory, temp_prefix(path))
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(directory)


def remove_stale_temps(path):
    """Remove the temp files a killed :func:`write_atomic` of ``path`` left (single writer only)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = temp_prefix(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and len(name) == len(prefix) + TEMP_RANDOM_CHARS:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
