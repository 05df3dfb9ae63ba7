#!/usr/bin/env bash
# Quickstart: the whole pipeline (prepare -> train -> evaluate -> table) for LS vs LABO on Multi30k de-en.
set -euo pipefail

usage() {
  cat <<USAGE
usage: scripts/quickstart.sh [--data DIR] [--work DIR] [--updates N] [--labo-warmup N] [--seed S] [--force] [--dry-run]

A DEMONSTRATION of the project, not the paper's setting. It runs the project's own commands on
Multi30k task 1 de-en (29,000 real image-caption pairs; test = test_2016_flickr, 1,000 sentences):

  0. scripts/install.sh                            installs what is missing (a finished .venv is reused)
  1. labo-fairseq prepare multi30k.de-en          Moses tokenization, lowercase, joint BPE 5k, fairseq-preprocess
  2. labo-fairseq train multi30k_de_en ls|labo 1  a 2-layer transformer (configs/datasets/multi30k_de_en.yaml),
                                                  800 updates, LABO's warm-up 200 updates
  3. labo-fairseq evaluate ...                    beam 5 on the test set, tokenized BLEU + sacrebleu
  4. labo-fairseq tables ...                      the two-row LS vs LABO table

Everything goes under --work (data/, data-bin/, runs/, results/). About 15 minutes on 2 CPU cores;
a GPU is used when there is one (fp16). Re-running reuses what is finished (a trained run, an
evaluation) and prints the table again.

  --data DIR        directory holding the Multi30k files {train,val,test_2016_flickr}.{de,en}.gz
                    (default: multi30k/task1/raw of the test-data directory, LABO_SHARED_DATA,
                    if present, else they are downloaded)
  --work DIR        where data, runs and results go (default: work/quickstart in the working directory)
  --updates N       optimizer updates per method (default: the config's 800)
  --labo-warmup N   LABO's uniform-LS warm-up in updates (default: the config's 200; paper: 5000)
  --seed S          training seed (default: 1)
  --force           delete an earlier --work directory of this script first (otherwise finished steps are reused)
  --dry-run         print the commands, run nothing
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=""
work="$PWD/work/quickstart"
updates=""
warmup=""
seed=1
force=0
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data=$2; shift 2 ;;
    --work) work=$(realpath -m "$2"); shift 2 ;;
    --updates) updates=$2; shift 2 ;;
    --labo-warmup) warmup=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --force) force=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$updates" "$warmup" "$seed"; do
  [[ -z "$v" || "$v" =~ ^[0-9]+$ ]] || { echo "quickstart.sh: --updates, --labo-warmup and --seed take integers >= 0" >&2; exit 2; }
done

if [[ $dry -eq 0 ]]; then bash "$repo/scripts/install.sh"; fi  # a finished .venv is reused
source "$repo/scripts/lib.sh"  # labo_python: the project's Python (.venv if present)
py=$(labo_python)
lf=("$py" -m labo_fairseq)  # the labo-fairseq command of this checkout

prepare=("${lf[@]}" prepare multi30k.de-en --root "$work")
shared_raw="${LABO_SHARED_DATA:-$repo/../shared/data}/multi30k/task1/raw"  # the tests' default directory
if [[ -z "$data" && -d "$shared_raw" ]]; then data="$shared_raw"; fi
if [[ -n "$data" ]]; then
  [[ -d "$data" ]] || { echo "quickstart.sh: --data $data: no such directory" >&2; exit 1; }
  prepare+=(--source "$data" --offline)
fi

# Overrides of the config go after --; the table marks runs trained with them (†).
declare -A extra=([ls]="" [labo]="")
if [[ -n "$updates" ]]; then extra[ls]="--max-update $updates"; extra[labo]="--max-update $updates"; fi
if [[ -n "$warmup" ]]; then extra[labo]+=" --labo-warmup-updates $warmup"; fi
gpus=()
if [[ $dry -eq 0 ]] && "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then gpus=(--gpus 1); fi

dryflag=()
[[ $dry -eq 0 ]] || dryflag=(--dry-run)  # the project's commands then print their fairseq commands
run() {  # print a command (copy-pasteable), then run it
  { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2
  "$@"
}

start=$SECONDS
marker="$work/.labo_quickstart"  # --force deletes only a directory this script made
if [[ $force -eq 1 && -d "$work" && $dry -eq 0 ]]; then
  [[ -f "$marker" ]] || { echo "quickstart.sh: $work was not made by this script; not deleting it" >&2; exit 2; }
  run rm -rf "$work"
fi
if [[ $dry -eq 0 ]]; then mkdir -p "$work" && touch "$marker"; fi
if [[ -n "$data" ]]; then echo "quickstart.sh: Multi30k from $data" >&2
else echo "quickstart.sh: no --data and no test-data directory at $shared_raw (LABO_SHARED_DATA): downloading Multi30k" >&2; fi
run "${prepare[@]}" "${dryflag[@]}" || {
  echo "quickstart.sh: preparing the data failed (above); offline, give the directory holding Multi30k's" \
       "{train,val,test_2016_flickr}.{de,en}.gz with --data DIR" >&2; exit 1; }
for method in ls labo; do
  train=("${lf[@]}" train multi30k_de_en "$method" "$seed" --root "$work" --quiet "${gpus[@]}" "${dryflag[@]}")
  # shellcheck disable=SC2206  # the overrides are a word list of flags and integers
  [[ -z "${extra[$method]}" ]] || train+=(-- ${extra[$method]})
  run "${train[@]}"
  result="$work/results/multi30k_de_en/$method/seed$seed.json"
  if [[ $dry -eq 1 || ! -f "$result" ]]; then
    run "${lf[@]}" evaluate multi30k_de_en "$method" "$seed" --root "$work" "${dryflag[@]}"
  fi
done
tables=("${lf[@]}" tables --root "$work" --dataset multi30k_de_en)
if [[ $dry -eq 1 ]]; then { printf '+'; printf ' %q' "${tables[@]}"; printf '\n'; } >&2; exit 0; fi
run "${tables[@]}"
echo
echo "DEMONSTRATION ONLY: Multi30k de-en (29k caption pairs), a 2-layer transformer, few updates, one seed:"
echo "this shows the pipeline working end to end, not the paper's setting or a comparison of the methods."
echo "Wall time: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s. Results: $work/results"
