#!/usr/bin/python3
"""TEST ONLY (tests/harness/kickstart_post.py): the `dnf` a kickstart %post finds in the real-OS
test guest's root, which is Debian 12: its base system is in dpkg's database, not rpm's, so a
real dnf's solver would refuse hostkv-agent's `Requires: python3` and /bin/sh.  This does what
`dnf -y install NAME...` does for a package with no missing dependencies, with the repos the
%post configured, and nothing else:

  * reads every enabled repo with a baseurl from /etc/yum.repos.d/*.repo,
  * finds NAME in each repo's repodata (repomd.xml -> primary.xml.gz), the highest version wins
    (rpm's own rpm.vercmp),
  * downloads it and runs `rpm -i --nodeps FILE` - the ONE deviation from EL (--nodeps: python3
    and /bin/sh come from dpkg); rpm's transaction, database and scriptlets are the real ones.

Every call is appended to /run/hostkv-ks/calls; exit status 1 (with a reason) on any failure.
"""
import configparser
import glob
import gzip
import os
import subprocess
import sys
import tempfile
import urllib.request
import xml.etree.ElementTree as ET

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"


def fail(msg):
    sys.stderr.write("dnf (hostkv test adapter): %s\n" % msg)
    sys.exit(1)


def fetch(url):
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read()


def repos():
    out = []
    for path in sorted(glob.glob("/etc/yum.repos.d/*.repo")):
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(path)
        for section in cp.sections():
            if cp.get(section, "enabled", fallback="1").strip() == "1" and cp.has_option(section, "baseurl"):
                out.append((section, cp.get(section, "baseurl").strip().rstrip("/") + "/"))
    return out


def vercmp(a, b):
    out = subprocess.run(["rpm", "--eval", "%%{lua: print(rpm.vercmp(%r, %r))}" % (a, b)],
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return int(out.strip())


def candidates(name):
    found = []
    for section, base in repos():
        repomd = ET.fromstring(fetch(base + "repodata/repomd.xml"))
        for data in repomd.findall(REPO_NS + "data"):
            if data.get("type") != "primary":
                continue
            primary = ET.fromstring(gzip.decompress(fetch(base + data.find(REPO_NS + "location").get("href"))))
            for pkg in primary.findall(COMMON_NS + "package"):
                if pkg.findtext(COMMON_NS + "name") != name:
                    continue
                v = pkg.find(COMMON_NS + "version")
                evr = "%s:%s-%s" % (v.get("epoch") or "0", v.get("ver"), v.get("rel"))
                found.append((evr, base + pkg.find(COMMON_NS + "location").get("href"), section))
    return found


def main(argv):
    os.makedirs("/run/hostkv-ks", exist_ok=True)
    with open("/run/hostkv-ks/calls", "a") as f:
        f.write("dnf %s\n" % " ".join(argv))
    if argv[:2] != ["-y", "install"] or len(argv) < 3:
        fail("only `dnf -y install NAME...` is supported, not: dnf %s" % " ".join(argv))
    for name in argv[2:]:
        found = candidates(name)
        if not found:
            fail("no package %s in the enabled repos %s" % (name, repos()))
        best = found[0]
        for cand in found[1:]:
            if vercmp(cand[0], best[0]) > 0:
                best = cand
        with tempfile.NamedTemporaryFile(dir="/var/tmp", suffix=".rpm", delete=False) as f:
            f.write(fetch(best[1]))
        try:
            print("dnf (hostkv test adapter): %s %s from repo %s: rpm -i --nodeps" % (name, best[0], best[2]))
            sys.stdout.flush()
            rc = subprocess.call(["rpm", "-i", "--nodeps", f.name])
        finally:
            os.unlink(f.name)
        if rc != 0:
            fail("rpm -i --nodeps %s exited %d" % (os.path.basename(best[1]), rc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
