"""The initramfs format: an uncompressed newc cpio archive, written without the cpio tool.

Contract: ``write_cpio(root, out_path, extra_nodes=())`` writes the tree ``root`` (directories,
regular files, symlinks; owner root, mtime 0, sorted: reproducible) plus ``extra_nodes``
(``[(path, mode, major, minor)]`` device nodes, so no mknod or root is needed).  GNU cpio reads it
back (tests/vm/test_harness_unit.py).  Uncompressed: it boots faster under TCG.
"""

import os
import stat


def _cpio_header(name, mode, nlink, size, rdevmajor=0, rdevminor=0, ino=0):
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevmajor, rdevminor, len(name) + 1, 0)
    return ("070701" + "".join("%08X" % v for v in fields) + name + "\0").encode()


def _pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def write_cpio(root, out_path, extra_nodes=()):
    """Write ``root`` as an uncompressed newc cpio (owner root, mtime 0, sorted: reproducible).

    ``extra_nodes``: [(path, mode, major, minor)] device nodes added without mknod.
    """
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            entries.append(rel)
        for name in sorted(filenames):
            entries.append(os.path.normpath(os.path.join(rel, name)))
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                entries.append(os.path.normpath(os.path.join(rel, name)))
    ino = 1
    with open(out_path, "wb") as out:
        for rel in entries:
            path = os.path.join(root, rel)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    data = f.read()
            elif stat.S_ISDIR(st.st_mode):
                if os.path.islink(path):
                    continue
                data = b""
            else:
                continue
            hdr = _cpio_header(rel, st.st_mode, 2 if stat.S_ISDIR(st.st_mode) else 1, len(data),
                               ino=ino)
            ino += 1
            out.write(hdr + _pad(len(hdr)) + data + _pad(len(data)))
        for name, mode, major, minor in extra_nodes:
            hdr = _cpio_header(name, mode, 1, 0, major, minor, ino=ino)
            ino += 1
            out.write(hdr + _pad(len(hdr)))
        hdr = _cpio_header("TRAILER!!!", 0, 1, 0)
        out.write(hdr + _pad(len(hdr)))

