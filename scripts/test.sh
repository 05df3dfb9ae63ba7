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
  scripts/test.sh -n 0 -x tests/losses/test_token.py   one file in this process (for a debugger)
Tests run on one pytest-xdist worker per core, up to 4, each with one torch thread.
Tests on real data read the test-data directory that LABO_SHARED_DATA names (default: shared/data
beside the checkout) and are skipped, with the
reason, when it is absent.
USAGE
  exit 0
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/install.sh"  # a finished .venv is reused in seconds
cd "$repo"
# One pytest-xdist worker per core, up to 4 (each runs fairseq processes of about a GB); the
# distillation tests share one trained teacher, so they run on one worker (--dist loadgroup).
workers=$(nproc 2>/dev/null || echo 1)
if (( workers > 4 )); then workers=4; fi
# -rs: every skip with its reason; a -n of yours (-n 0: no workers) comes after, so it wins
exec "$repo/.venv/bin/python" -m pytest -q -rs -n "$workers" --dist loadgroup "$@"
