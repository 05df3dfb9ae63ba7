#!/usr/bin/env bash
# CI on the official fairseq stack, from nothing: Python 3.8, fairseq 0.12.2 from its PyPI wheel
# (built for Python 3.8 only), torch 2.4.1 and pip<24.1 (newer pip refuses omegaconf 2.0's
# metadata). It runs the tests that depend on fairseq's version: the losses and criteria against
# their references, the plugin's fairseq fixes (incl. the encoder fast path, docs/fairseq-compat.md),
# checkpoint loading, one end-to-end train -> resume -> generate with --user-dir on real text,
# fairseq-generate run in-process as evaluate runs it, and torch's build read without importing it.
#
#   .ci/official_fairseq.sh [--keep-venv DIR] [--install-only | --tests-only]
#
# The venv goes to a temporary directory, removed at the end, unless --keep-venv DIR names one
# (reused if it already holds the stack). --install-only installs torch and fairseq into DIR and
# stops; --tests-only installs the plugin into a DIR that holds them and runs the tests (.ci/run
# installs the stack beside its other parts, as that is mostly download, and tests it after them).
# pip's cache is off so that a run measures a fresh machine. PYTHON38 overrides the interpreter
# (default: pyenv's 3.8.18).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

venv=""
part=all
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keep-venv) venv=$2; shift 2 ;;
    --install-only) part=install; shift ;;
    --tests-only) part=tests; shift ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "official_fairseq.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

[[ "$part" == all || -n "$venv" ]] || { echo "official_fairseq.sh: --$part-only needs --keep-venv DIR" >&2; exit 2; }

start=$SECONDS
if [[ -z "$venv" ]]; then
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/labo-official-fairseq.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  venv="$tmp/venv"
fi

if [[ -z "${PYTHON38:-}" ]]; then
  pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  PYTHON38="$pyenv_root/versions/3.8.18/bin/python"
fi
[[ -x "$PYTHON38" ]] || { echo "official_fairseq.sh: no Python 3.8 at $PYTHON38 (set PYTHON38)" >&2; exit 2; }

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$venv/bin/python" -m pip)
run() { printf '+'; printf ' %q' "$@"; printf '\n'; "$@"; }

if [[ "$part" != tests ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    run "$PYTHON38" -m venv "$venv"
  fi
  run "${pip[@]}" install -q "pip<24.1"
  # torch 2.4.1 on PyPI is the CUDA build (about 2.5 GB with its nvidia-* wheels); it runs on CPU.
  run "${pip[@]}" install -q "torch==2.4.1" "fairseq==0.12.2"
  echo "install: $((SECONDS - start)) s"
  if [[ "$part" == install ]]; then exit 0; fi
fi
[[ -x "$venv/bin/python" ]] || { echo "official_fairseq.sh: no venv at $venv (run --install-only first)" >&2; exit 2; }
# the plugin is installed here, not with the stack: .ci/run installs the stack beside the checkout's
# own install, and two installs of one checkout at once could race on its build files
run "${pip[@]}" install -q -e "$repo[test,study]"
"$venv/bin/python" - <<'EOF'
import sys, torch, fairseq
assert sys.version_info[:2] == (3, 8), sys.version
assert torch.__version__.split("+")[0] == "2.4.1" and fairseq.__version__ == "0.12.2", (torch.__version__, fairseq.__version__)
print(f"stack: Python {sys.version.split()[0]}, torch {torch.__version__}, fairseq {fairseq.__version__}")
EOF

cd "$repo"
# -p no:cacheprovider: write nothing into the checkout; -n: a pytest-xdist worker per core
run "$venv/bin/python" -m pytest -q -p no:cacheprovider -rs -n "$(nproc)" \
  tests/losses/test_token.py tests/plugin/test_criteria.py tests/plugin/test_fixes.py tests/plugin/test_encoder_fast_path.py \
  tests/plugin/test_checkpoints.py "tests/study/test_end_to_end.py::test_labo_warmup_resume_and_generate" \
  "tests/study/test_pipeline.py::test_train_evaluate_tables_over_two_seeds_with_resume_and_no_clobber" \
  tests/runtime/test_provenance.py "tests/runtime/test_runtime.py::test_run_generate_in_process_prints_what_the_fairseq_generate_child_prints" \
  "tests/runtime/test_runtime.py::test_run_generate_names_the_failure_with_its_output"
echo "official fairseq CI: $((SECONDS - start)) s in all"
