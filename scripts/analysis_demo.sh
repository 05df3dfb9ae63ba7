#!/usr/bin/env bash
# The README's example analysis figures, from the quickstart's LS and LABO checkpoints
# (scripts/quickstart.sh must have run; a demonstration on a small model, not the paper's setting).
set -euo pipefail

usage() {
  cat <<USAGE
usage: scripts/analysis_demo.sh [--work DIR] [--out DIR] [--force]

  --work DIR   the quickstart's --work directory (default: work/quickstart)
  --out DIR    where the JSON and PNG files go (default: docs/figures)
  --force      overwrite earlier results in --out
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="$repo/work/quickstart"
out="$repo/docs/figures"
force=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --work) work=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --force) force=(--force); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "analysis_demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for f in "$work/ls.test.out" "$work/labo.test.out" "$work/checkpoints/labo/checkpoint_last.pt"; do
  [[ -f "$f" ]] || { echo "analysis_demo.sh: $f is missing: run scripts/quickstart.sh first" >&2; exit 1; }
done
py=$(dirname "$(command -v python)")/python
[[ -x "$repo/.venv/bin/python" ]] && py="$repo/.venv/bin/python"
cd "$repo"

"$py" -m labo_fairseq.analysis.freq_splits --train-src "$work/text/train.de" --src "$work/text/test.de" \
  --system "LS=$work/ls.test.out" --system "LABO=$work/labo.test.out" --tokenize none \
  --out "$out/freq" "${force[@]}"
"$py" -m labo_fairseq.analysis.beam_probs "$work/data-bin" --system "LS=$work/checkpoints/ls/checkpoint_last.pt" \
  --system "LABO=$work/checkpoints/labo/checkpoint_last.pt" --splits "$out/freq/freq_splits.json" \
  --out "$out/beam" "${force[@]}"
for method in ls labo; do
  "$py" -m labo_fairseq.analysis.calibrate "$work/data-bin" --path "$work/checkpoints/$method/checkpoint_last.pt" \
    --subset valid --out "$out/calibration_$method" --bleu-temperatures 0.8 1.0 1.3 "${force[@]}"
done
