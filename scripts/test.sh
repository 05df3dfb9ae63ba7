#!/usr/bin/env bash
# The test command: install what is missing (scripts/install.sh reuses a finished .venv), then run
# pytest. Arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the fast tier.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<USAGE
usage: scripts/test.sh [PYTEST ARGS...]

Installs the project into .venv if needed (scripts/install.sh), then runs its tests:
  scripts/test.sh                 everything (CI runs this; end-to-end fairseq runs take minutes)
  scripts/test.sh -m "not slow"   the fast tier (under a minute): no test that starts fairseq
Tests on real data read ../shared/data (LABO_SHARED_DATA overrides) and are skipped, with the
reason, when it is absent.
USAGE
  exit 0
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/install.sh"  # a finished .venv is reused in seconds
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest -q -rs "$@"  # -rs: every skip with its reason
