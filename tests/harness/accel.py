"""The ONE place that decides how test guests are accelerated: KVM or TCG.

Contract:
  * KVM is used only if the CPU advertises hardware virtualisation (``vmx`` or ``svm`` in
    /proc/cpuinfo) AND /dev/kvm can be opened read-write by this process.  Anything else means
    TCG.  (On nested ``kvm_pvm`` hosts /dev/kvm exists but the CPU has no vmx/svm flag: QEMU then
    starts with ``-accel kvm`` and the guest hangs silently, so the flag check is essential.)
  * ``HOSTKV_TEST_ACCEL=kvm|tcg`` in the environment overrides the probe (e.g. to force TCG on a
    KVM host); any other value raises ValueError.
  * ``use_kvm()`` -> bool, ``qemu_accel_args()`` -> argv list for qemu-system-x86_64,
    ``libvirt_domain_type()`` -> ``'kvm'`` or ``'qemu'`` (the ``<domain type=...>`` attribute).
    The probe runs once per process.
"""

import os

_CPUINFO = "/proc/cpuinfo"
_KVM_DEV = "/dev/kvm"
_decision = None


def _cpu_has_virt_flags(cpuinfo=None):
    """True if any 'flags' line of ``cpuinfo`` (default /proc/cpuinfo) lists vmx or svm."""
    cpuinfo = cpuinfo or _CPUINFO
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[-1].split()
                    if "vmx" in flags or "svm" in flags:
                        return True
    except OSError:
        return False
    return False


def _kvm_device_usable(path=None):
    """True if ``path`` (default /dev/kvm) can be opened read-write (what QEMU needs)."""
    path = path or _KVM_DEV
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def use_kvm():
    """Return True if test guests run under KVM, False for TCG (decided once per process)."""
    global _decision
    if _decision is None:
        forced = os.environ.get("HOSTKV_TEST_ACCEL", "").strip().lower()
        if forced:
            if forced not in ("kvm", "tcg"):
                raise ValueError("HOSTKV_TEST_ACCEL must be 'kvm' or 'tcg', not %r" % forced)
            _decision = forced == "kvm"
        else:
            _decision = _cpu_has_virt_flags() and _kvm_device_usable()
    return _decision


def qemu_accel_args():
    """QEMU arguments selecting the accelerator, e.g. ``['-accel', 'tcg']``."""
    if use_kvm():
        return ["-accel", "kvm"]
    # One TCG thread is plenty for a 1-vCPU guest; a big translation cache is not needed.
    return ["-accel", "tcg,tb-size=64"]


def libvirt_domain_type():
    """The libvirt ``<domain type=...>`` for test guests: ``'kvm'`` or ``'qemu'`` (TCG)."""
    return "kvm" if use_kvm() else "qemu"


def describe():
    """One line for logs: which accelerator and why."""
    return "accel=%s (cpu vmx/svm: %s, %s usable: %s)" % (
        "kvm" if use_kvm() else "tcg", _cpu_has_virt_flags(), _KVM_DEV, _kvm_device_usable())
