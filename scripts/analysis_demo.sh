#!/usr/bin/env bash
# The example analysis figures of docs/analysis.md and the README, from the quickstart's LS and LABO
# runs plus a CE run of the same model (trained here if missing): a demonstration on a small model,
# not the paper's setting. scripts/quickstart.sh must have run.
set -euo pipefail

usage() {
  cat <<USAGE
usage: scripts/analysis_demo.sh [--work DIR] [--out DIR] [--force] [--dry-run]

Runs every analysis on the quickstart's Multi30k runs (LS, LABO; CE is trained first if it is not
there, about 15 minutes on 2 CPU cores): freq-splits, beam-probs, calibrate (LS, LABO),
penultimate (CE, LS, LABO) and inference-calibration (CE, LS, LABO). A step whose JSON is already
in --out is skipped, so running it again continues; --force redoes every step.

  --work DIR   the quickstart's --work directory (default: work/quickstart)
  --out DIR    where the JSON and PNG files go (default: work/analysis-demo; the committed
               examples of docs/analysis.md were copied from such a run)
  --force      overwrite earlier results in --out
  --dry-run    print the commands, run nothing
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="$repo/work/quickstart"
out="$repo/work/analysis-demo"
force=0
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --work) work=$(realpath -m "$2"); shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "analysis_demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
data_bin="$work/data-bin/multi30k.de-en"
text="$work/data/multi30k.de-en"
run_dir() { echo "$work/runs/multi30k_de_en/$1/seed1"; }
ckpt() { echo "$(run_dir "$1")/checkpoints/checkpoint_best.pt"; }
source "$repo/scripts/lib.sh"
lf=("$(labo_python)" -m labo_fairseq)

show() { printf '+'; printf ' %q' "$@"; printf '\n'; }
# needs=(FILE...) step JSON COMMAND...: run an analysis unless its JSON exists (then say so), after
# checking the quickstart's files it reads; or print it (--dry-run)
needs=()
check_needs() {
  local f
  for f in "${needs[@]}"; do
    [[ -f "$f" ]] || { echo "analysis_demo.sh: $f is missing: run scripts/quickstart.sh first" >&2; exit 1; }
  done
}
step() {
  local json=$1; shift
  if [[ $dry -eq 1 ]]; then show "$@"; return; fi
  if [[ $force -eq 0 && -f "$json" ]]; then echo "analysis_demo.sh: $json exists; skipped (--force redoes it)"; return; fi
  check_needs
  if [[ $force -eq 1 ]]; then set -- "$@" --force; fi
  show "$@"
  "$@"
}

# CE is not in the quickstart: the same model and updates with plain cross-entropy
needs=("$(ckpt ls)" "$(ckpt labo)")
train_ce=("${lf[@]}" train multi30k_de_en ce 1 --root "$work")
if [[ $dry -eq 1 || ! -f "$(ckpt ce)" ]]; then
  show "${train_ce[@]}"
  if [[ $dry -eq 0 ]]; then check_needs; "${train_ce[@]}"; fi
fi

needs=("$(run_dir ls)/eval/generate-test.de-en.txt" "$(run_dir labo)/eval/generate-test.de-en.txt")

step "$out/freq/freq_splits.json" "${lf[@]}" analyze freq-splits --train-src "$text/train.de" --src "$text/test.de" \
  --system "LS=$(run_dir ls)/eval/generate-test.de-en.txt" --system "LABO=$(run_dir labo)/eval/generate-test.de-en.txt" \
  --tokenize none --out "$out/freq"
needs=("$(ckpt ls)" "$(ckpt labo)" "$(ckpt ce)")
step "$out/beam/beam_probs.json" "${lf[@]}" analyze beam-probs "$data_bin" --system "LS=$(ckpt ls)" \
  --system "LABO=$(ckpt labo)" --splits "$out/freq/freq_splits.json" --out "$out/beam"
for method in ls labo; do
  step "$out/calibration_$method/calibration.json" "${lf[@]}" analyze calibrate "$data_bin" --path "$(ckpt $method)" \
    --subset valid --out "$out/calibration_$method" --bleu-temperatures 0.8 1.0 1.3
done
step "$out/penultimate/penultimate.json" "${lf[@]}" analyze penultimate "$data_bin" \
  --system "CE=$(ckpt ce)" --system "LS=$(ckpt ls)" --system "LABO=$(ckpt labo)" --subset valid --out "$out/penultimate"
for method in ce ls labo; do
  step "$out/inference_calibration/$method/inference_calibration.json" "${lf[@]}" analyze inference-calibration \
    "$data_bin" --path "$(ckpt $method)" --name "${method^^}" --subset valid --gen-subset test \
    --train-tgt "$text/train.en" --out "$out/inference_calibration/$method"
done
