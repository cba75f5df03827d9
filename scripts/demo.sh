#!/usr/bin/env bash
# Set up everything (apt packages, .venv), then run the demo: a real guest reads its host's name,
# is live-migrated to a second simulated host, and reads the new name.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
