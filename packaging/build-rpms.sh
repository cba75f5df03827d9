#!/usr/bin/env bash
# Build hostkv's RPMs with a real rpmbuild, written to the dist dir (files of an older build there
# are replaced):
#   pass 1, packaging/hostkv.spec.in:         hostkv-agent-V-R.noarch.rpm, hostkv-host-V-R.noarch.rpm
#                                             (with hostkv-koan), hostkv-V-R.src.rpm
#   pass 2, packaging/hostkv-cobbler.spec.in: hostkv-cobbler-V-R.noarch.rpm (shipping pass 1's
#                                             hostkv-agent RPM), hostkv-cobbler-V-R.src.rpm
#
#   packaging/build-rpms.sh [--dist DIR] [--release N] [--srcdir DIR]
#
#   --dist DIR     where the RPMs go (default: <srcdir>/dist)
#   --release N    RPM Release (default: 1); the version always comes from <srcdir>/VERSION
#   --srcdir DIR   the source tree to package (default: this checkout).  Whatever is there now is
#                  packaged: VERSION, protocol/, guest_agent/, host_service/, koan_patch/,
#                  cobbler_plugin/, kickstart_snippets/, packaging/ (caches and *.pyc left out);
#                  nothing needs to be committed.
# Prints the paths of the built files, one per line, on stdout.  Needs: rpmbuild, tar, cpio.
set -euo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
dist= release=1
while [ $# -gt 0 ]; do
    case $1 in
        --dist) dist=$2; shift 2 ;;
        --release) release=$2; shift 2 ;;
        --srcdir) srcdir=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "build-rpms.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
dist=${dist:-$srcdir/dist}

die() { echo "build-rpms.sh: $*" >&2; exit 1; }
command -v rpmbuild >/dev/null || die "rpmbuild not found (apt-get install rpm; scripts/setup.sh does it)"
[ -f "$srcdir/VERSION" ] || die "$srcdir/VERSION is missing"
version=$(tr -d '[:space:]' < "$srcdir/VERSION")
[[ $version =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "$srcdir/VERSION: '$version' is not a version like 0.1.0"
# The code reports hostkv.common.version.VERSION: it must be the version the packages get.
grep -qx "VERSION = \"$version\"" "$srcdir/protocol/hostkv/common/version.py" 2>/dev/null \
    || die "$srcdir/protocol/hostkv/common/version.py does not say VERSION = \"$version\" (as $srcdir/VERSION does); run: python3 protocol/hostkv/common/version.py --write"
[[ $release =~ ^[0-9]+[A-Za-z0-9._]*$ ]] || die "--release '$release' is not a release like 1 or 2.el9"
for d in protocol/hostkv protocol/hostkv/common guest_agent/hostkv/agent host_service/hostkv koan_patch/hostkv_koan \
         cobbler_plugin/modules/hostkv kickstart_snippets packaging; do
    [ -d "$srcdir/$d" ] || die "$srcdir/$d is missing"
done

top=$(mktemp -d "${TMPDIR:-/tmp}/hostkv-rpmbuild.XXXXXX")
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT}

name=hostkv-$version
tar -C "$srcdir" -czf "$top/SOURCES/$name.tar.gz" \
    --exclude=__pycache__ --exclude='*.py[co]' --exclude='.*' \
    --owner=0 --group=0 --transform="s|^|$name/|" \
    VERSION protocol guest_agent host_service koan_patch cobbler_plugin kickstart_snippets packaging

# build SPEC: rpmbuild -ba of packaging/SPEC.in with @VERSION@/@RELEASE@ filled in.
# gzip payload and SHA-256 digests: readable by rpm on every EL from 8 on.
# --dbpath: keep rpmbuild from creating an rpm database in $HOME (Debian's default is ~/.rpmdb).
build() {
    sed -e "s|@VERSION@|$version|g" -e "s|@RELEASE@|$release|g" \
        "$srcdir/packaging/$1.in" > "$top/SPECS/$1"
    rpmbuild -ba --quiet \
        --dbpath "$top/rpmdb" \
        --define "_topdir $top" \
        --define "_binary_payload w9.gzdio" \
        --define "_source_payload w9.gzdio" \
        --define "_binary_filedigest_algorithm 8" \
        "$top/SPECS/$1" >"$top/rpmbuild-$1.log" 2>&1 \
        || { cat "$top/rpmbuild-$1.log" >&2; die "rpmbuild of $1 failed (log above)"; }
}
build hostkv.spec
agent_rpm=$top/RPMS/noarch/hostkv-agent-$version-$release.noarch.rpm
[ -f "$agent_rpm" ] || die "pass 1 did not produce ${agent_rpm##*/}"
cp -p "$agent_rpm" "$top/SOURCES/"
build hostkv-cobbler.spec

mkdir -p "$dist"
rm -f "$dist"/hostkv-agent-*.noarch.rpm "$dist"/hostkv-host-*.noarch.rpm \
      "$dist"/hostkv-cobbler-*.noarch.rpm "$dist"/hostkv-*.src.rpm
for f in "$top"/RPMS/noarch/*.rpm "$top"/SRPMS/*.rpm; do
    cp -p "$f" "$dist/"
    echo "$(cd "$dist" && pwd)/${f##*/}"
done
