#!/usr/bin/env bash
# Install everything hostkv's demo and tests need on a fresh Debian 12 machine (run as root).
# Idempotent: apt packages from scripts/apt-packages.txt, a venv in .venv from requirements-dev.txt.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (it installs Debian packages)" >&2; exit 1; }

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    t0=$SECONDS
    echo "setup: installing ${missing[*]}"
    # wait for a concurrent apt/dpkg (another set-up, unattended upgrades) instead of failing at once
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "setup: apt: ${#missing[@]} packages from scripts/apt-packages.txt installed in $((SECONDS - t0)) s"
fi

# Debian's own python3 (libvirt-python must be built against the system's libvirt).
req_hash=$(sha256sum requirements-dev.txt | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.req-hash 2>/dev/null)" != "$req_hash" ]; then
    t0=$SECONDS
    echo "setup: creating .venv"
    rm -rf .venv
    /usr/bin/python3 -m venv .venv
    # The same layout on every machine: with `wheel` present, pip (23.0.1, Debian 12's) builds every
    # sdist into a wheel and installs *.dist-info; without it, it falls back to `setup.py install`
    # (*.egg-info) for koan, Cheetah3 and libvirt-python -- or not, depending on the machine's wheel
    # cache.  So wheel goes in first, at the version pinned in requirements-dev.txt.
    pip_quiet() { .venv/bin/pip install -q "$@" 2>&1 | grep -v "^WARNING: Location"; return "${PIPESTATUS[0]}"; }
    pip_quiet "$(grep -E '^wheel==' requirements-dev.txt)" \
        && pip_quiet -r requirements-dev.txt \
        || { echo "setup: pip failed (see its errors above)" >&2; exit 1; }
    .venv/bin/python -c "import libvirt, qemu.qmp, cobbler, koan, pytest" \
        || { echo "setup: the venv is incomplete (see pip's errors above)" >&2; exit 1; }
    legacy=$(cd .venv/lib/python3*/site-packages && ls -d -- *.egg-info 2>/dev/null || true)
    if [ -n "$legacy" ]; then
        echo "setup: pip installed these the legacy way (egg-info, not dist-info): $legacy" >&2
        exit 1
    fi
    echo "$req_hash" > .venv/.req-hash
    echo "setup: venv: .venv from requirements-dev.txt built in $((SECONDS - t0)) s"
fi

# What udev would do on a normal host: without it /dev/kvm is 0600 and libvirt re-probes QEMU on
# every call (seconds per call).  Harmless where udev already did it.
if [ -e /dev/kvm ]; then
    chgrp kvm /dev/kvm 2>/dev/null || true
    chmod 0660 /dev/kvm 2>/dev/null || true
fi
echo "setup: ok"
