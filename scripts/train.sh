#!/usr/bin/env bash
# Train one dataset x method x seed with the paper's settings: scripts/train.sh DATASET METHOD SEED [options]
# (--help for the options; --dry-run prints the exact fairseq-train command).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
[[ -x "$repo/.venv/bin/python" && -z "${PYTHON:-}" ]] && python="$repo/.venv/bin/python"
exec "$python" -m labo_fairseq.experiments train "$@"
