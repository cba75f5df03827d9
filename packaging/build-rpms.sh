#!/usr/bin/env bash
# Build hostkv's RPMs with a real rpmbuild, written to the dist dir (files of an older build there
# are replaced):
#   pass 1, packaging/hostkv.spec.in:         hostkv-agent-V-R.noarch.rpm, hostkv-host-V-R.noarch.rpm
#                                             (with hostkv-koan), hostkv-V-R.src.rpm
#   pass 2, packaging/hostkv-cobbler.spec.in: hostkv-cobbler-V-R.noarch.rpm (shipping pass 1's
#                                             hostkv-agent RPM), hostkv-cobbler-V-R.src.rpm
#   (R is --release plus the builder's %{?dist}, e.g. 1.el9 on EL 9; empty on Debian's rpm)
#
#   packaging/build-rpms.sh [--dist DIR] [--release N] [--srcdir DIR]
#
#   --dist DIR     where the RPMs go (default: <srcdir>/dist)
#   --release N    RPM Release (default: 1); the version always comes from <srcdir>/VERSION
#   --srcdir DIR   the source tree to package (default: this checkout).  Whatever is there now is
#                  packaged: VERSION, LICENSE, docs/, protocol/, guest_agent/, host_service/,
#                  koan_patch/, cobbler_plugin/, kickstart_snippets/, packaging/ (caches and
#                  *.pyc left out), plus the man pages and bash completions generated from them
#                  (packaging/man/clidoc.py); nothing needs to be committed.
# Prints the paths of the built files, one per line, on stdout.  Needs: rpmbuild, tar, cpio, and
# a Python with argparse-manpage ($HOSTKV_BUILD_PYTHON, else .venv/bin/python, else python3).
set -euo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
dist= release=1
while [ $# -gt 0 ]; do
    case $1 in
        --dist) dist=$2; shift 2 ;;
        --release) release=$2; shift 2 ;;
        --srcdir) srcdir=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,19s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "build-rpms.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
dist=${dist:-$srcdir/dist}

die() { echo "build-rpms.sh: $*" >&2; exit 1; }
command -v rpmbuild >/dev/null || die "rpmbuild not found (apt-get install rpm; scripts/setup.sh does it)"
[ -f "$srcdir/VERSION" ] || die "$srcdir/VERSION is missing"
[ -f "$srcdir/LICENSE" ] || die "$srcdir/LICENSE is missing"
version=$(tr -d '[:space:]' < "$srcdir/VERSION")
[[ $version =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "$srcdir/VERSION: '$version' is not a version like 0.1.0"
# The code reports hostkv.common.version.VERSION: it must be the version the packages get.
grep -qx "VERSION = \"$version\"" "$srcdir/protocol/hostkv/common/version.py" 2>/dev/null \
    || die "$srcdir/protocol/hostkv/common/version.py does not say VERSION = \"$version\" (as $srcdir/VERSION does); run: python3 protocol/hostkv/common/version.py --write"
[[ $release =~ ^[0-9]+[A-Za-z0-9._]*$ ]] || die "--release '$release' is not a release like 1 or 2.el9"
for d in protocol/hostkv protocol/hostkv/common guest_agent/hostkv/agent host_service/hostkv koan_patch/hostkv_koan \
         cobbler_plugin/modules/hostkv kickstart_snippets packaging docs; do
    [ -d "$srcdir/$d" ] || die "$srcdir/$d is missing"
done

# The Python that generates the man pages and bash completions from the commands' argparse
# parsers (packaging/man/clidoc.py; it needs argparse-manpage): $HOSTKV_BUILD_PYTHON, else the
# venv scripts/setup.sh builds in this checkout or in --srcdir, else python3.
here=$(cd "$(dirname "$0")/.." && pwd)
py=
for candidate in "${HOSTKV_BUILD_PYTHON:-}" "$here/.venv/bin/python" "$srcdir/.venv/bin/python" python3; do
    if [ -n "$candidate" ] && "$candidate" -c 'import argparse_manpage' 2>/dev/null; then
        py=$candidate
        break
    fi
done
[ -n "$py" ] || die "no Python with argparse-manpage for the man pages (bash scripts/setup.sh puts it into .venv; or pip install argparse-manpage and set HOSTKV_BUILD_PYTHON)"

top=$(mktemp -d "${TMPDIR:-/tmp}/hostkv-rpmbuild.XXXXXX")
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT,gen}

# Man pages and completions, generated now from the sources being packaged and shipped inside
# the source tarball (generated/man, generated/completion): the SRPM rebuilds anywhere with no
# generator, and the pages always describe the code they ship with.
PYTHONDONTWRITEBYTECODE=1 "$py" "$srcdir/packaging/man/clidoc.py" --srcdir "$srcdir" \
    --out "$top/gen/generated" >"$top/clidoc.log" 2>&1 \
    || { cat "$top/clidoc.log" >&2; die "generating the man pages failed (log above)"; }

name=hostkv-$version
tar -czf "$top/SOURCES/$name.tar.gz" \
    --exclude=__pycache__ --exclude='*.py[co]' --exclude='.*' \
    --owner=0 --group=0 --transform="s|^|$name/|" \
    -C "$srcdir" VERSION LICENSE docs protocol guest_agent host_service koan_patch cobbler_plugin \
                 kickstart_snippets packaging \
    -C "$top/gen" generated

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
# Release is $release%{?dist}: whatever dist tag this builder's rpm defines
agents=("$top"/RPMS/noarch/hostkv-agent-"$version"-"$release"*.noarch.rpm)
[ "${#agents[@]}" = 1 ] && [ -f "${agents[0]}" ] \
    || die "pass 1 did not produce one hostkv-agent-$version-$release*.noarch.rpm"
agent_rpm=${agents[0]}
cp -p "$agent_rpm" "$top/SOURCES/"
build hostkv-cobbler.spec

mkdir -p "$dist"
rm -f "$dist"/hostkv-agent-*.noarch.rpm "$dist"/hostkv-host-*.noarch.rpm \
      "$dist"/hostkv-cobbler-*.noarch.rpm "$dist"/hostkv-*.src.rpm
for f in "$top"/RPMS/noarch/*.rpm "$top"/SRPMS/*.rpm; do
    cp -p "$f" "$dist/"
    echo "$(cd "$dist" && pwd)/${f##*/}"
done
