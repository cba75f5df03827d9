#!/usr/bin/env bash
# Set up everything (apt packages, .venv), then run the demo of the libvirt path (scripts/demo.py):
# two simulated KVM hosts with libvirt and hostkvd, a libvirt guest with the org.hostkv.0 channel,
# `hostkvctl vm set`, `virsh migrate --live` there and back; the guest reads each host's name.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
