"""The test guest's kernel: Debian's, unpacked once per kernel .deb, booted directly (PVH) if it can.

Contract:
  * ``MODULES``: the kernel modules the guest loads, in load order (guest_init/init insmods them).
  * ``kernel_cache(deb, cache)`` -> a directory under ``<cache>/kernels/`` holding ``vmlinuz``,
    the PVH ``vmlinux`` (if USE_PVH and the kernel allows it), ``modules/*.ko`` (MODULES only),
    ``release`` and ``kernel-name`` (which of the two to boot).  Made once per .deb (and MODULES),
    shared by every image; the 400 MB ``dpkg -x`` tree is not kept.
  * ``extract_pvh_kernel(bzimage, dest)``: the uncompressed vmlinux inside a bzImage, True if it
    has the PVH entry note (QEMU and libvirt then boot it with the same -kernel, seconds faster
    under TCG); ``has_pvh_note(elf_bytes)``.
"""

import glob
import hashlib
import os
import shutil
import tempfile

from tests.harness.build_step import GuestImageError, run_step

USE_PVH = True
# Kernel modules, in load order (see guest_init/init); path relative to lib/modules/<rel>/kernel.
# The virtio devices every test domain has and the ext4 root's (the real-OS image installs these):
DISK_MODULES = (
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko", "drivers/char/virtio_console.ko",
    "drivers/block/virtio_blk.ko", "lib/crc16.ko", "fs/mbcache.ko", "crypto/crc32c_generic.ko",
    "fs/jbd2/jbd2.ko", "fs/ext4/ext4.ko",
)
MODULES = DISK_MODULES + ("net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko")


def has_pvh_note(elf):
    """True if the ELF64 image ``elf`` (bytes) has a Xen PHYS32_ENTRY note (PVH boot)."""
    import struct
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _flags, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", elf,
                                                                  phoff + i * phentsize)
        if ptype != 4:          # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:      # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_pvh_kernel(bzimage, dest):
    """Write the uncompressed vmlinux inside ``bzimage`` to ``dest`` and return True if it can
    be booted directly (PVH entry note).  Under TCG this skips ~3-5 s of firmware + xz
    decompression before the kernel starts; QEMU and libvirt boot it with the same -kernel."""
    import lzma
    with open(bzimage, "rb") as f:
        data = f.read()
    off = data.find(b"\xfd7zXZ\x00")
    if off < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
    except lzma.LZMAError:
        return False
    if not has_pvh_note(elf):
        return False
    with open(dest, "wb") as f:
        f.write(elf)
    return True



def kernel_cache(deb, cache):
    """Unpack what the guest needs from the kernel .deb once: ``vmlinuz``, the PVH ``vmlinux``
    (if USE_PVH and possible), ``modules/*.ko`` (MODULES only), ``release``, ``kernel-name``.
    Shared by all images built from this .deb; the 400 MB dpkg -x tree is not kept."""
    tag = hashlib.sha256(repr((MODULES, USE_PVH, 1)).encode()).hexdigest()[:8]
    kernels = os.path.join(cache, "kernels")
    os.makedirs(kernels, exist_ok=True)
    dest = os.path.join(kernels, "%s-%s" % (os.path.basename(deb)[:-4], tag))
    if os.path.exists(os.path.join(dest, "kernel-name")):
        return dest
    tmp = tempfile.mkdtemp(prefix=".k-", dir=kernels)
    try:
        x = os.path.join(tmp, "x")
        run_step(["dpkg", "-x", deb, x], "extracting %s" % os.path.basename(deb))
        vmlinuz = glob.glob(os.path.join(x, "boot", "vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise GuestImageError("expected one vmlinuz in %s, found %r" % (deb, vmlinuz))
        release = os.path.basename(vmlinuz[0])[len("vmlinuz-"):]
        out = os.path.join(tmp, "out")
        os.makedirs(os.path.join(out, "modules"))
        shutil.copy2(vmlinuz[0], os.path.join(out, "vmlinuz"))
        kdir = os.path.join(x, "lib", "modules", release, "kernel")
        for mod in MODULES:
            src = os.path.join(kdir, mod)
            if not os.path.exists(src):
                raise GuestImageError("kernel module %s is not in %s" % (mod, deb))
            shutil.copy2(src, os.path.join(out, "modules"))
        if USE_PVH and extract_pvh_kernel(vmlinuz[0], os.path.join(out, "vmlinux")):
            kernel_name = "vmlinux"
        else:
            kernel_name = "vmlinuz"
        with open(os.path.join(out, "release"), "w") as f:
            f.write(release)
        with open(os.path.join(out, "kernel-name"), "w") as f:
            f.write(kernel_name)
        os.rename(out, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

