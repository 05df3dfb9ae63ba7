#!/usr/bin/env bash
# Rebuild Table 1 and Table 2 from results/*.json (mean ± std over seeds, the paper's numbers): scripts/tables.sh [options]
# (--help for the options.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec "$(labo_python)" -m labo_fairseq.tables "$@"
