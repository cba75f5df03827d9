#!/usr/bin/env bash
# Build libvirt's modular QEMU daemon, as EL9/EL10 hosts run it, for the tests' EL9-like hosts.
#
# Why a build: Debian 12's libvirt (9.0) is built with the modular daemons, but its packages do
# not install them (debian/rules keeps `SRV_SPLIT` commented out; bookworm-backports and trixie
# ship /usr/sbin/libvirtd only).  So this builds them from Debian's own source package of exactly
# the libvirt version installed here (orig tarball + Debian's patches, unpacked by dpkg-source,
# which checks every file against the .dsc's checksums), with Debian's own settings for what
# matters to a QEMU host (qemu user/group libvirt-qemu, QEMU's module and data dirs, /run), and
# everything a test host does not use turned off (storage/network/secret drivers, SELinux,
# AppArmor, polkit, docs, tests).  The same code Debian's libvirtd runs, in EL9's process layout.
#
# Result (printed on stdout's last line): a build tree whose src/virtqemud, src/virtproxyd and
# src/libvirt_driver_qemu.so run in place (libvirt finds its driver modules in a build tree by
# itself when the daemon is started by its absolute path there).  Kept in
# $HOSTKV_VIRTQEMUD_CACHE (default /var/cache/hostkv-test/virtqemud), keyed by the libvirt version
# and this script's hash; a complete build is reused, an incomplete one rebuilt.
# ~3 min on 2 cores.  Needs the build packages of scripts/apt-packages.txt (setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(dpkg-query -W -f '${Version}' libvirt-daemon)
upstream=${version%%-*}
key="$version-$(sha256sum "$here/build-virtqemud.sh" | cut -c1-12)"
cache=${HOSTKV_VIRTQEMUD_CACHE:-/var/cache/hostkv-test/virtqemud}
top="$cache/$key"
tree="$top/libvirt-$upstream"
say() { echo "build-virtqemud: $*" >&2; }

if [ -f "$top/complete" ] && [ -x "$tree/build/src/virtqemud" ]; then
    echo "$tree/build"
    exit 0
fi
t0=$SECONDS
rm -rf "$top"
mkdir -p "$top"
cd "$top"

# The source package from the machine's own Debian mirrors (the ones apt uses; no deb-src line needed).
dsc="libvirt_$version.dsc"
fetched=
for uri in $(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' | sort -u); do
    for pool in pool/main pool/updates/main; do
        if curl -fsS -o "$dsc" "${uri%/}/$pool/libv/libvirt/$dsc" 2>/dev/null; then
            fetched="${uri%/}/$pool/libv/libvirt"
            break 2
        fi
    done
done
[ -n "$fetched" ] || { say "no mirror in apt's sources has $dsc"; exit 1; }
for f in $(awk '/^Checksums-Sha256:/{on=1;next} /^[^ ]/{on=0} on{print $3}' "$dsc"); do
    curl -fsS -o "$f" "$fetched/$f"
done
(awk '/^Checksums-Sha256:/{on=1;next} /^[^ ]/{on=0} on{print $1"  "$3}' "$dsc" | sha256sum -c --quiet) \
    || { say "the files of $dsc do not match its checksums"; exit 1; }
# (dpkg-source checks them too; it cannot check the signature without a Debian keyring: it says so)
dpkg-source -x "$dsc" "libvirt-$upstream" >"$top/unpack.log" 2>&1 \
    || { cat "$top/unpack.log" >&2; say "dpkg-source -x $dsc failed"; exit 1; }
say "source: $fetched/$dsc ($((SECONDS - t0)) s)"

cd "$tree"
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
meson setup build -Dauto_features=disabled \
    --prefix=/usr --sysconfdir=/etc --localstatedir=/var -Drunstatedir=/run \
    -Dpackager=hostkv-tests -Dpackager_version="$version" \
    -Ddriver_qemu=enabled -Ddriver_remote=enabled -Ddriver_libvirtd=enabled -Dyajl=enabled \
    -Dqemu_user=libvirt-qemu -Dqemu_group=libvirt-qemu \
    -Dqemu_moddir="/usr/lib/$multiarch/qemu" -Dqemu_datadir=/usr/share/qemu \
    -Ddocs=disabled -Dtests=disabled -Dinit_script=none >"$top/meson.log" 2>&1 \
    || { tail -30 "$top/meson.log" >&2; say "meson setup failed (log: $top/meson.log)"; exit 1; }
ninja -C build src/virtqemud src/virtproxyd src/libvirt_driver_qemu.so src/libvirt_iohelper \
    >"$top/ninja.log" 2>&1 \
    || { tail -30 "$top/ninja.log" >&2; say "build failed (log: $top/ninja.log)"; exit 1; }
touch "$top/complete"
say "virtqemud $upstream (Debian $version) built in $((SECONDS - t0)) s: $tree/build/src/virtqemud"
echo "$tree/build"
