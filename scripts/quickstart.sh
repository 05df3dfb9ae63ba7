#!/usr/bin/env bash
# Quickstart: LS vs LABO on real IWSLT'14 de-en text, a small transformer, beam-5 BLEU. CPU or GPU.
set -euo pipefail

usage() {
  cat <<USAGE
usage: scripts/quickstart.sh [--data DIR] [--work DIR] [--updates N] [--labo-warmup N] [--force] [--dry-run]

A DEMONSTRATION of the plugin, not the paper's setting: fairseq's tokenized + BPE'd IWSLT'14 de-en
valid set (7,283 TED sentence pairs, real text) is the training data, test sentences 1-500 the
validation set and 501-1500 the test set; a 2-layer transformer trains for --updates updates with
fairseq's label smoothing (ls) and with LABO (labo), then each is decoded with beam 5.

  --data DIR         directory holding iwslt14.de-en/fairseq-tokenized/ (default: ../shared/data)
  --work DIR         where data-bin, checkpoints and outputs go (default: work/quickstart)
  --updates N        optimizer updates per method (default: 600; about 6 min each on 2 CPU cores)
  --labo-warmup N    LABO's uniform-LS warm-up in updates (default: 200; paper: 5000)
  --force            delete an existing --work directory first (otherwise finished steps are reused)
  --dry-run          print the fairseq commands, run nothing
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data="$repo/../shared/data"
work="$repo/work/quickstart"
updates=600
warmup=200
force=0
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --updates) updates=$2; shift 2 ;;
    --labo-warmup) warmup=$2; shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$updates" =~ ^[0-9]+$ && "$warmup" =~ ^[0-9]+$ ]] || { echo "quickstart.sh: --updates and --labo-warmup take integers >= 0" >&2; exit 2; }

src="$data/iwslt14.de-en/fairseq-tokenized"
if [[ ! -f "$src/valid.de.xz" || ! -f "$src/test.en.xz" ]]; then
  echo "quickstart.sh: expected fairseq's IWSLT'14 files {valid,test}.{de,en}.xz in $src (see --data)" >&2
  exit 1
fi
bin_dir=$(dirname "$(command -v python)")
[[ -x "$bin_dir/fairseq-train" ]] || bin_dir="$repo/.venv/bin"
[[ -x "$bin_dir/fairseq-train" || $dry -eq 1 ]] || { echo "quickstart.sh: fairseq-train not found; run scripts/install.sh" >&2; exit 1; }

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'  # copy-pasteable
  if [[ $dry -eq 0 ]]; then "$@"; fi
}

if [[ $force -eq 1 && -d "$work" ]]; then run rm -rf "$work"; fi
[[ $dry -eq 1 ]] || mkdir -p "$work/text"
cd "$repo"  # --user-dir labo_fairseq is relative to the repository

if [[ $dry -eq 0 && ! -f "$work/text/.done" ]]; then
  for lang in de en; do
    xz -dc "$src/valid.$lang.xz" > "$work/text/train.$lang"
    xz -dc "$src/test.$lang.xz" | sed -n '1,500p' > "$work/text/valid.$lang"
    xz -dc "$src/test.$lang.xz" | sed -n '501,1500p' > "$work/text/test.$lang"
  done
  touch "$work/text/.done"
fi
if [[ ! -f "$work/data-bin/dict.en.txt" ]]; then
  run "$bin_dir/fairseq-preprocess" --source-lang de --target-lang en --joined-dictionary --workers 2 \
    --trainpref "$work/text/train" --validpref "$work/text/valid" --testpref "$work/text/test" \
    --destdir "$work/data-bin"
fi

device=(--cpu)
if [[ $dry -eq 0 ]] && "$bin_dir/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  device=(--fp16)
fi
declare -A criterion=(
  [ls]="--criterion label_smoothed_cross_entropy --label-smoothing 0.1"
  [labo]="--criterion label_smoothed_labo --label-smoothing 0.1 --labo-tau 1.15 --labo-warmup-updates $warmup"
)
for method in ls labo; do
  # shellcheck disable=SC2086  # criterion flags are a word list
  run "$bin_dir/fairseq-train" "$work/data-bin" --user-dir labo_fairseq --task translation \
    --arch transformer_iwslt_de_en --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 \
    --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --share-all-embeddings \
    ${criterion[$method]} --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 \
    --lr-scheduler inverse_sqrt --warmup-updates 100 --warmup-init-lr 1e-7 --dropout 0.1 --weight-decay 1e-4 \
    --max-tokens 4096 --max-update "$updates" --seed 1 --save-dir "$work/checkpoints/$method" \
    --no-epoch-checkpoints --validate-interval 1000 --log-interval 50 --num-workers 0 "${device[@]}"
  if [[ $dry -eq 1 || ! -s "$work/$method.test.out" ]]; then
    # fairseq-generate with --user-dir: loads the checkpoint on torch >= 2.6 and translates every sentence.
    run "$bin_dir/fairseq-generate" "$work/data-bin" --user-dir labo_fairseq \
      --path "$work/checkpoints/$method/checkpoint_last.pt" --gen-subset test --beam 5 --remove-bpe \
      --max-tokens 8000 --results-path "$work/$method.test" "${device[@]}"
    [[ $dry -eq 1 ]] || mv "$work/$method.test/generate-test.txt" "$work/$method.test.out"
  fi
done
[[ $dry -eq 1 ]] && exit 0

echo
echo "DEMONSTRATION ONLY (small model, $updates updates, 7k training pairs; not the paper's setting)"
echo "IWSLT'14 de-en test sentences 501-1500, beam 5, tokenized lowercased BLEU (fairseq-generate --remove-bpe)"
echo "| method | BLEU | sentences |"
echo "|---|---|---|"
for method in ls labo; do
  out="$work/$method.test.out"
  bleu=$(grep -oE 'BLEU4 = [0-9.]+' "$out" | awk '{print $3}')
  n=$(grep -c '^H-' "$out")
  echo "| $method | $bleu | $n |"
done
