#!/usr/bin/env bash
# The example analysis figures of docs/analysis.md, from the quickstart's LS and LABO checkpoints
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
data_bin="$work/data-bin/multi30k.de-en"
text="$work/data/multi30k.de-en"
run() { echo "$work/runs/multi30k_de_en/$1/seed1"; }
for f in "$(run ls)/eval/generate-test.de-en.txt" "$(run labo)/eval/generate-test.de-en.txt" \
         "$(run ls)/checkpoints/checkpoint_best.pt" "$(run labo)/checkpoints/checkpoint_best.pt"; do
  [[ -f "$f" ]] || { echo "analysis_demo.sh: $f is missing: run scripts/quickstart.sh first" >&2; exit 1; }
done
source "$repo/scripts/lib.sh"
py=$(labo_python)

"$py" -m labo_fairseq analyze freq-splits --train-src "$text/train.de" --src "$text/test.de" \
  --system "LS=$(run ls)/eval/generate-test.de-en.txt" --system "LABO=$(run labo)/eval/generate-test.de-en.txt" \
  --tokenize none --out "$out/freq" "${force[@]}"
"$py" -m labo_fairseq analyze beam-probs "$data_bin" --system "LS=$(run ls)/checkpoints/checkpoint_best.pt" \
  --system "LABO=$(run labo)/checkpoints/checkpoint_best.pt" --splits "$out/freq/freq_splits.json" \
  --out "$out/beam" "${force[@]}"
for method in ls labo; do
  "$py" -m labo_fairseq analyze calibrate "$data_bin" --path "$(run $method)/checkpoints/checkpoint_best.pt" \
    --subset valid --out "$out/calibration_$method" --bleu-temperatures 0.8 1.0 1.3 "${force[@]}"
done
