#!/usr/bin/env python3
"""Hardening figures (issue 6): load held, faults survived, inputs tried, data lost.

    .venv/bin/python bench/hardening_figures.py [--runs N] [--seconds S] [--vm]

1. Load: N runs of the hostile-guest scenario (tests/hardening/load.py: real hostkvd, one
   well-behaved guest + flood/fast/malformed offenders, each its own process), one line per run
   with the well-behaved guest's p50/p99 unloaded vs loaded and their ratio (measured side by side
   in the same run: a figure, not a test assertion), what each offender got through, hostkvd's
   memory high-water mark, pings lost, and the work hostkvd did in its largest loop turn per channel.
2. Faults, fuzzing, isolation, agent kills (and with --vm the 20-hop migration ping-pong): runs
   those pytest modules and prints the figure lines they emit.
Exit status 1 if any run lost data or a test failed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO] + [os.path.join(REPO, d) for d in ("protocol", "guest_agent", "host_service")]
os.environ["PYTHONPATH"] = os.pathsep.join(sys.path[1:4])

from tests.hardening.load import run_load  # noqa: E402

FIGURE_LINE = re.compile(r"^\s*(fuzz:|restart ->|config:|agent:|isolation:|ping-pong:|libvirt:|load run)")


def load_figures(runs, seconds):
    bad = 0
    print("== load: %.0f s attack per run; p50/p99 in ms of the well-behaved guest's ping" % seconds)
    print("run  unloaded p50/p99   loaded p50/p99   p99 ratio  hostkvd HWM  flood accepted   fast pongs/s"
          "  malformed: closes, penalties, errors back  lost")
    for i in range(runs):
        f = run_load(tempfile.mkdtemp(prefix="hostkv-bench-load-"), seconds=seconds)
        o = f["offenders"]
        flood_mib = o["flood"]["sent_bytes"] / 1048576.0
        bad += f["lost"]
        print("%3d  %6.3f / %6.3f    %6.3f / %6.3f   %9.2f  %7.1f MiB  %5.1f MiB (%.2f MiB/s)  %7.0f"
              "      %d, %s s, %d bad-json        %d"
              % (i, f["unloaded"]["p50"], f["unloaded"]["p99"], f["loaded"]["p50"], f["loaded"]["p99"],
                 f["ratio_p99"], f["hwm_kib"] / 1024.0, flood_mib, flood_mib / seconds,
                 o["fast"]["frames"].get("pong", 0) / seconds, o["malformed"]["closes"],
                 "/".join("%.1f" % g for g in o["malformed"]["gaps"]),
                 o["malformed"]["frames"].get("error:bad-json", 0), f["lost"]))
        turns = f["status"]
        print("     work per loop turn (counted, what the test bounds): "
              + ", ".join("%s %d B/%d req" % (label.split(".")[0], turns[label]["turn_max"]["bytes"],
                                             turns[label]["turn_max"]["requests"]) for label in sorted(turns))
              + "; replies queued at most %d B" % max(t["queued_max"] for t in turns.values()))
    print("   (flood: 1 GiB offered, held to 1 MiB/s after a 4 MiB burst; it would take ~17 min to pass)")
    return bad


def test_figures(vm):
    modules = ["test_hardening_fuzz.py", "test_hardening_faults.py", "test_hardening_isolation.py",
               "test_hardening_agent.py"] + (["test_hardening_vm.py", "test_hardening_libvirt.py"] if vm else [])
    argv = [os.path.join(REPO, ".venv", "bin", "pytest"), "-q", "-s", "-p", "no:cacheprovider"] + [
        os.path.join(REPO, "tests", "hardening", m) for m in modules]
    print("\n== faults, fuzzing, isolation, agent kills%s (pytest)" % (", migration ping-pong" if vm else ""))
    res = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True)
    for line in res.stdout.splitlines():
        m = FIGURE_LINE.search(line.lstrip("."))
        if m:
            print("  " + line.lstrip(". "))
    print("  " + (res.stdout.strip().splitlines() or ["(no output)"])[-1])
    return res.returncode


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--vm", action="store_true", help="also the 20-hop migration ping-pong (~80 s)")
    args = p.parse_args()
    lost = load_figures(args.runs, args.seconds)
    rc = test_figures(args.vm)
    print("\ndata lost: %d" % lost)
    return 1 if lost or rc else 0


if __name__ == "__main__":
    sys.exit(main())
