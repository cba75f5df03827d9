#!/usr/bin/env bash
# Run commands the way a new user would: in a Debian 12 root built fresh for this run.
#
#   scripts/cleanroom.sh [--keep] [--] COMMAND [ARG...]         e.g. scripts/cleanroom.sh bash scripts/test.sh -x
#   scripts/cleanroom.sh [--keep] --step NAME 'SHELL CMD' ...   (what .ci/run does: one timed step per README command)
#   scripts/cleanroom.sh --reuse DIR ...                        run again in a root kept with --keep
#
# What the root is, every run (as root; CPU heavy: developers run it under flock /work/coord/heavy.lock):
#   * `mmdebstrap --variant=minbase bookworm` (Essential packages + apt, plus git to clone) from the
#     machine's own apt sources (/etc/apt/sources.list and sources.list.d, copied as they are);
#   * carried in from the machine, as files, only how its package managers reach their registries:
#     the CA bundle /etc/ssl/certs/ca-certificates.crt, /etc/pip.conf, ~/.config/pip/, and the
#     environment variables pip and apt read (PIP_*, *_proxy, SSL_CERT_FILE, REQUESTS_CA_BUNDLE, ...);
#     the rest of the environment is not (PATH, TMPDIR, PYTHONPATH... are a fresh root shell's);
#   * /etc/hosts as the Debian installer writes it (minbase has none, and then "localhost" is a DNS query);
#   * a fresh `git clone` of this checkout's COMMITTED HEAD at /root/hostkv (uncommitted changes are not in it);
#   * a private mount + PID namespace and pivot_root into the root (not chroot: the suite's own
#     unshare/nsenter need the namespace's root to be the clean root); /dev, /sys bound, a new /proc,
#     tmpfs on /tmp and /run.  When the run ends, every process started in it ends with it.
# Nothing of the machine's installed packages, pip cache or venvs is visible inside.  The only tool
# taken from the machine is mmdebstrap itself (installed here if missing).
#
# Output: everything the steps print, then the time of each phase (root; apt and venv as printed by
# scripts/setup.sh; each step), then the last pytest summary line seen, if any.  Exit status: the
# first failing step's (the last step's if several failed, so pytest's wins), 0 if all passed;
# 2 if the root could not be built.  The work dir (root + log) lives under /var/tmp (not /tmp) and is
# removed afterwards unless --keep.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
keep=0
reuse=""
names=()
cmds=()
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1; shift ;;
        --reuse) [ $# -ge 2 ] || usage; reuse=$(cd "$2" && pwd) || exit 2; keep=1; shift 2 ;;
        --step) [ $# -ge 3 ] || usage; names+=("$2"); cmds+=("$3"); shift 3 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "cleanroom: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
if [ $# -gt 0 ]; then
    names+=("cmd"); cmds+=("$(printf '%q ' "$@")")
fi
[ "${#cmds[@]}" -gt 0 ] || usage
[ "$(id -u)" = 0 ] || { echo "cleanroom: run as root (it builds a root file system and mounts)" >&2; exit 2; }

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
say() { echo "cleanroom: $*"; }

head_rev=$(git -C "$top" rev-parse HEAD) || { echo "cleanroom: $top is not a git checkout" >&2; exit 2; }
if [ -n "$(git -C "$top" status --porcelain --untracked-files=no)" ]; then
    say "WARNING: uncommitted changes in $top are not in the clean room (it clones HEAD ${head_rev:0:12})"
fi

if [ -n "$reuse" ]; then
    work=$reuse
else
    work=$(mktemp -d /var/tmp/hostkv-cleanroom.XXXXXX) || exit 2
fi
root=$work/root
log=$work/cleanroom.log
src=/root/hostkv                                   # the clone, as seen inside the root

cleanup() {
    if [ "$keep" = 1 ]; then
        say "kept $work (root: $root, log: $log); run again there with: $0 --reuse $work ..."
        return
    fi
    # The namespaces' mounts were private and ended with their last process; refuse to delete
    # through a mount point all the same.
    if findmnt -rn -o TARGET | grep -q "^$work/"; then
        say "WARNING: something is mounted under $work; not removing it"
        return
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

t_start=$(now)
t_root=0
if [ -z "$reuse" ]; then
    # ---------------------------------------------------------------- the root
    if ! command -v mmdebstrap >/dev/null; then
        say "installing mmdebstrap on this machine (the only tool the clean room takes from it)"
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq mmdebstrap >/dev/null \
            || { echo "cleanroom: could not install mmdebstrap" >&2; exit 2; }
    fi
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && grep -qvE '^[[:space:]]*(#|$)' "$f" && sources+=("$f")
    done
    [ "${#sources[@]}" -gt 0 ] || { echo "cleanroom: this machine has no apt sources" >&2; exit 2; }
    say "building a Debian 12 minbase root in $root from ${sources[*]}"
    if ! mmdebstrap --variant=minbase --include=git bookworm "$root" "${sources[@]}" \
            >"$work/mmdebstrap.log" 2>&1; then
        tail -n 30 "$work/mmdebstrap.log"
        echo "cleanroom: mmdebstrap failed (log: $work/mmdebstrap.log)" >&2
        keep=1
        exit 2
    fi
    # the machine's package-manager trust and configuration, as files
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    # ...also as a local CA, so an update-ca-certificates run by a package's postinst keeps it
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
        "$root/usr/local/share/ca-certificates/cleanroom-machine-bundle.crt"
    [ -f /etc/pip.conf ] && install -D -m 0644 /etc/pip.conf "$root/etc/pip.conf"
    if [ -d "$HOME/.config/pip" ]; then
        mkdir -p "$root/root/.config"
        cp -a "$HOME/.config/pip" "$root/root/.config/pip"
    fi
    # what the Debian installer writes (mmdebstrap writes no /etc/hosts)
    hn=$(cat "$root/etc/hostname" 2>/dev/null || hostname)
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n' \
        "$hn" >"$root/etc/hosts"
    t_root=$(now)
    say "root built in $(secs "$t_start" "$t_root") s ($(du -sh --one-file-system "$root" | cut -f1))"
fi

# ---------------------------------------------------------------- the checkout, committed state
mkdir -p "$root/root/.cleanroom"
git -C "$top" bundle create -q "$root/root/.cleanroom/src.bundle" HEAD 2>/dev/null \
    || git -C "$top" bundle create "$root/root/.cleanroom/src.bundle" HEAD \
    || { echo "cleanroom: git bundle failed" >&2; exit 2; }

# environment: a root login's, plus what pip and apt read to reach their registries
envs=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
while IFS= read -r name; do
    case "$name" in
        PIP_*|http_proxy|https_proxy|ftp_proxy|no_proxy|all_proxy|HTTP_PROXY|HTTPS_PROXY|FTP_PROXY|NO_PROXY|ALL_PROXY|\
        SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|GIT_SSL_CAINFO|CI|TERM|HOSTKV_*)
            envs+=("$name=${!name}") ;;
    esac
done < <(compgen -e)

# Runs inside the root after pivot_root: clone, then each step, with marker lines for the summary.
runner='
set -u
src=$1; shift
if [ -d "$src/.git" ]; then
    git -C "$src" fetch -q /root/.cleanroom/src.bundle HEAD && git -C "$src" reset -q --hard FETCH_HEAD \
        && git -C "$src" clean -q -fdx -e .venv || exit 2
else
    git -c advice.detachedHead=false clone -q /root/.cleanroom/src.bundle "$src" || exit 2
fi
echo "cleanroom: $src is at $(git -C "$src" log -1 --format="%h %s")"
cd "$src"
final=0
while [ $# -ge 2 ]; do
    name=$1 cmd=$2; shift 2
    echo "cleanroom: step $name: $cmd"
    t0=$(date +%s.%N)
    bash -c "$cmd"
    rc=$?
    t1=$(date +%s.%N)
    echo "cleanroom-step $name $rc $(awk -v a="$t0" -v b="$t1" "BEGIN { printf \"%.1f\", b - a }")"
    [ "$rc" = 0 ] || final=$rc
done
exit $final
'
# Runs in the new namespaces (the machine's tools): mounts, pivot_root, then the runner.
enter='
set -e
root=$1; shift
mount --bind "$root" "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/lock" "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
exec "$@"
'
args=()
for i in "${!cmds[@]}"; do args+=("${names[$i]}" "${cmds[$i]}"); done

t_run=$(now)
unshare --mount --propagation private --pid --fork --kill-child -- \
    /bin/bash -c "$enter" enter "$root" \
    /usr/bin/env -i "${envs[@]}" /bin/bash -c "$runner" runner "$src" "${args[@]}" \
    < /dev/null 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
t_end=$(now)

# ---------------------------------------------------------------- summary
echo
say "phases (seconds)"
[ -z "$reuse" ] && printf '  %-8s %6s  %s\n' root "$(secs "$t_start" "$t_root")" "mmdebstrap --variant=minbase bookworm + files carried in"
# scripts/setup.sh prints "setup: apt: ... in N s" and "setup: venv: ... in N s" when it does the work
apt_s=$(sed -n 's/^setup: apt: .* in \([0-9.]*\) s$/\1/p' "$log" | head -n1)
venv_s=$(sed -n 's/^setup: venv: .* in \([0-9.]*\) s$/\1/p' "$log" | head -n1)
printf '  %-8s %6s  %s\n' apt "${apt_s:-0}" "scripts/setup.sh: Debian packages from scripts/apt-packages.txt"
printf '  %-8s %6s  %s\n' venv "${venv_s:-0}" "scripts/setup.sh: .venv from requirements-dev.txt"
setup_left=$(awk -v a="${apt_s:-0}" -v b="${venv_s:-0}" 'BEGIN { print a + b }')
while read -r _ name src_rc s; do
    # the first step that ran setup carries its time: shown above, not again here
    own=$(awk -v s="$s" -v t="$setup_left" 'BEGIN { d = s - t; if (d < 0) d = 0; printf "%.0f", d }')
    used=$(awk -v s="$s" -v t="$setup_left" 'BEGIN { print (s >= t) ? t : s }')
    setup_left=$(awk -v t="$setup_left" -v u="$used" 'BEGIN { print t - u }')
    printf '  %-8s %6s  exit %s\n' "$name" "$own" "$src_rc"
done < <(grep '^cleanroom-step ' "$log")
printf '  %-8s %6s\n' total "$(secs "$t_start" "$t_end")"
if [ "$rc" != 0 ] && ! grep -q '^cleanroom-step ' "$log"; then
    say "the clean room failed before any step ran (exit $rc)"
fi
summary=$(grep -E '^=+ .*(passed|failed|error|no tests ran|skipped|deselected).* in [0-9.]+s.* =+$' "$log" | tail -n1)
[ -n "$summary" ] && echo "$summary"
exit "$rc"
