#!/usr/bin/env bash
# Install fairseq (fairseq-fixed 0.12.3.1, built from source against the pinned torch and numpy<2)
# and the labo_fairseq plugin into a virtual environment; or build an offline install bundle on a
# networked machine (--bundle) and install from it on a node without internet (--from-bundle).
set -euo pipefail

usage() {
  cat <<USAGE
usage: scripts/install.sh [--venv DIR] [--python PYTHON] [--torch SPEC] [--no-fairseq] [--dry-run]

  --venv DIR       virtual environment to create or reuse (default: .venv in the repository)
  --python PYTHON  interpreter that creates the venv (default: python3; tested: Python 3.11)
  --torch SPEC     torch requirement (default: the pin in constraints.txt, torch==2.13.0, CPU on
                   the CI machine); a GPU user passes e.g. 'torch==2.13.0' with their own index
                   via PIP_EXTRA_INDEX_URL
  --no-fairseq     do not build fairseq-fixed (you already have fairseq, e.g. official 0.12.2)
  --dry-run        print the commands, run nothing

Offline install bundle (docs/install.md):
  --bundle DIR         on a networked machine, download into DIR what DIR lacks: fairseq-fixed's
                       sdist, the wheels of fairseq's and the plugin's requirements, of the build
                       requirements and of tensorboardX, for --python-version on manylinux x86_64.
                       Never torch or numpy: the target's own are used
  --python-version X.Y the target's Python (default: that of --python)
  --numpy VERSION      resolve against this numpy, the target's (default 1.26.4: wheels resolved
                       for numpy 1.26.4 also run on numpy 2; give the target's numpy 2.x for a
                       Python without numpy 1.26 wheels, >= 3.13)
  --wheel-python PY    also compile fairseq-fixed into a wheel with PY: an interpreter of the
                       target's Python version with the target's torch and numpy versions (a CPU
                       build of that torch will do). The target then installs it with nothing to
                       compile
  --target-has FILE    leave out what the target already has: FILE is its 'pip list --format
                       freeze'; --from-bundle checks that those versions are there
  --pack               also write DIR.tar.xz, the bundle as one file for transport (its wheels
                       stored uncompressed inside, so that xz compresses across them: about a
                       third smaller than DIR)
  --from-bundle DIR    install from DIR (or from a DIR.tar.xz of --pack) with no index: fairseq-fixed from its prebuilt wheel when
                       the bundle has one and its extensions import here, else compiled here
                       against the torch and numpy already installed (never replaced), then
                       the plugin (editable, with its test extra). Fails early unless torch and
                       numpy import. Into --venv (created with --system-site-packages, to see the
                       interpreter's torch) or, with --no-venv, into --python itself
  --no-venv            with --from-bundle: install into the interpreter --python
  --jobs N             parallel compilations of fairseq's extensions (default: the CPU count)

usage: scripts/install.sh --bundle DIR [--python-version X.Y] [--numpy VERSION] [--wheel-python PY]
                         [--target-has FILE] [--pack] [--python PYTHON] [--dry-run]
       scripts/install.sh --from-bundle DIR|DIR.tar.xz [--venv DIR | --no-venv] [--python PYTHON] [--jobs N] [--dry-run]

Afterwards: source DIR/bin/activate, or call DIR/bin/fairseq-train directly.
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
python=python3
torch_spec=""
with_fairseq=1
dry=0
bundle=""
from_bundle=""
pyver=""
numpy_version=1.26.4
wheel_python=""
target_has=""
pack=0
use_venv=1
jobs=$(nproc 2>/dev/null || echo 4)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bundle) bundle=$2; shift 2 ;;
    --from-bundle) from_bundle=$2; shift 2 ;;
    --python-version) pyver=$2; shift 2 ;;
    --wheel-python) wheel_python=$2; shift 2 ;;
    --target-has) target_has=$2; shift 2 ;;
    --numpy) numpy_version=$2; shift 2 ;;
    --no-venv) use_venv=0; shift ;;
    --pack) pack=1; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --torch) torch_spec=$2; shift 2 ;;
    --no-fairseq) with_fairseq=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'  # copy-pasteable
  if [[ $dry -eq 0 ]]; then "$@"; fi
}

constraints="$repo/constraints.txt"
fairseq_pin=$(grep -E '^fairseq-fixed==' "$constraints")
if [[ -n "$bundle" && -n "$from_bundle" ]]; then
  echo "install.sh: --bundle and --from-bundle exclude each other (see --help)" >&2; exit 2
fi
if [[ -n "$bundle" ]]; then
  source "$repo/scripts/install_bundle.sh"
  make_bundle
  exit 0
fi
if [[ -n "$from_bundle" ]]; then
  source "$repo/scripts/install_bundle.sh"
  install_from_bundle
  exit 0
fi
[[ -n "$torch_spec" ]] || torch_spec=$(grep -E '^torch==' "$constraints")
pip=("$venv/bin/python" -m pip)

# A finished install with the same inputs is reused in seconds (scripts/test.sh and
# scripts/quickstart.sh start with this script).
stamp="$venv/.labo-installed"
want=$(cat "$constraints" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)" $torch_spec fairseq=$with_fairseq"
if [[ $dry -eq 0 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$venv/bin/python" -c 'import fairseq.data.data_utils_fast, labo_fairseq' >/dev/null 2>&1; then
  echo "install.sh: $venv is installed and up to date (delete $stamp to reinstall)"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  run "$python" -m venv "$venv"
fi
run "${pip[@]}" install --upgrade pip "setuptools<81" wheel
# Build requirements of fairseq-fixed first, so that its extensions compile against exactly these.
run "${pip[@]}" install -c "$constraints" "$torch_spec" "numpy<2" cython

fairseq_ok() {
  # The Cython extension fails to import when built against another numpy major version.
  "$venv/bin/python" -c 'import fairseq, fairseq.data.data_utils_fast, fairseq.data.token_block_utils_fast' \
    >/dev/null 2>&1
}
if [[ $with_fairseq -eq 1 ]]; then
  if [[ $dry -eq 0 ]] && fairseq_ok; then
    echo "fairseq already importable in $venv: not rebuilding"
  else
    # --no-build-isolation: an isolated build would fetch an unpinned (CUDA, multi-GB) torch.
    # --no-deps: fairseq-fixed requires torchaudio, which fairseq does not need for translation
    #            and which pins another torch; its real dependencies are in pyproject.toml.
    # --no-cache-dir: pip caches the wheel by sdist, not by the numpy it was built against.
    # The wheel is kept in $venv/wheels with the versions it was built for: --bundle
    # --wheel-python $venv/bin/python reuses it instead of compiling fairseq again.
    wheels="$venv/wheels"
    run rm -rf "$wheels"
    run "${pip[@]}" wheel -c "$constraints" --no-build-isolation --no-deps --no-cache-dir -w "$wheels" "$fairseq_pin"
    run "${pip[@]}" install --no-deps --force-reinstall "$wheels"/fairseq_fixed-*.whl
    if [[ $dry -eq 0 ]]; then
      "$venv/bin/python" "$repo/scripts/bundle.py" built-with > "$wheels/fairseq-wheel.json"
    fi
  fi
fi
run "${pip[@]}" install -c "$constraints" -e "$repo[test,study,plots,hf]"
echo "note: pip's complaint that fairseq-fixed requires torchaudio is expected: translation does not use it"
if [[ $dry -eq 0 ]]; then
  "$venv/bin/python" -c 'import fairseq, torch, numpy, labo_fairseq; print("fairseq", fairseq.__version__, "| torch", torch.__version__, "| numpy", numpy.__version__, "| labo_fairseq", labo_fairseq.__version__)'
  echo "$want" > "$stamp"
fi
