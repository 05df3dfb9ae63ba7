#!/usr/bin/env bash
# Evaluate a trained run (beam 5, the paper's BLEU + sacrebleu) into results/: scripts/evaluate.sh DATASET METHOD SEED [options]
# (--help for the options.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec "$(labo_python)" -m labo_fairseq.evaluate "$@"
