#!/usr/bin/env bash
# Train one dataset x method x seed with the paper's settings: scripts/train.sh DATASET METHOD SEED [options]
# (--help for the options.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec "$(labo_python)" -m labo_fairseq.experiments train "$@"
