# The offline install bundle of scripts/install.sh (--bundle, --from-bundle); sourced by it, which
# defines run, dry, python, repo, venv, use_venv, pyver, numpy_version, jobs, constraints, fairseq_pin.

# Packages published only as sdists: turned into wheels here, so that the target needs no network
# and no build of them. antlr4-python3-runtime is omegaconf's (pure Python: a py3-none-any wheel).
sdist_only=("antlr4-python3-runtime==4.9.3")
# Build requirements of fairseq-fixed without build isolation (its sdist compiles on the target
# against the target's torch and numpy), and tensorboardX (fairseq logs to it when present).
build_reqs=("cython" "setuptools<81" "wheel")
extra_reqs=("tensorboardX")

make_bundle() {
  local dir py_target
  dir=$(realpath -m "$bundle")
  [[ $dry -eq 1 ]] || mkdir -p "$dir"
  py_target=${pyver:-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
  local pipx=("$python" -m pip)
  # Tags of the wheels a manylinux x86_64 target installs; pure-Python wheels always qualify.
  local target=(--only-binary=:all: --python-version "$py_target" --implementation cp)
  local tag
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_17 manylinux2014; do
    target+=(--platform "${tag}_x86_64")
  done

  local sdist="$dir/fairseq_fixed-${fairseq_pin#*==}.tar.gz"
  if [[ -f "$sdist" ]]; then
    echo "already in the bundle: $(basename "$sdist")"
  else
    run "$python" "$repo/scripts/bundle.py" fetch-sdist fairseq-fixed "${fairseq_pin#*==}" "$dir"
  fi
  local spec name
  for spec in "${sdist_only[@]}"; do
    name=${spec%%==*}
    if compgen -G "$dir/${name//-/_}-${spec#*==}-*.whl" >/dev/null; then
      echo "already in the bundle: $spec"
    else
      run "${pipx[@]}" wheel --no-deps --no-binary :all: -w "$dir" "$spec"
    fi
  done

  # The requirements: the plugin's (pyproject.toml, test extra included; torch and numpy left out),
  # the build requirements, tensorboardX; under constraints.txt's pins and the target's numpy.
  echo "+ $python scripts/bundle.py requirements pyproject.toml > $dir/requirements.txt (+ ${build_reqs[*]} ${extra_reqs[*]})"
  echo "+ grep hydra-core/omegaconf constraints.txt > $dir/constraints.txt (+ numpy==$numpy_version)"
  if [[ $dry -eq 0 ]]; then
    { "$python" "$repo/scripts/bundle.py" requirements "$repo/pyproject.toml"
      printf '%s\n' "${build_reqs[@]}" "${extra_reqs[@]}"; } > "$dir/requirements.txt"
    { grep -E '^(hydra-core|omegaconf)==' "$constraints"
      echo "numpy==$numpy_version"; } > "$dir/constraints.txt"
  fi
  # pip download keeps what DIR already has. numpy comes along (scipy requires it): removed by
  # finish below, like anything of torch's.
  if ! run "${pipx[@]}" download -d "$dir" --find-links "$dir" "${target[@]}" \
      -r "$dir/requirements.txt" -c "$dir/constraints.txt"; then
    echo "install.sh: the download failed; is numpy==$numpy_version published for Python $py_target? (--numpy)" >&2
    exit 1
  fi
  # Cython's pure-Python wheel (1.4 MB) replaces its compiled one (3.4 MB), for the 64 MiB: it only
  # translates fairseq's two .pyx files, with about 1 s more CPU time (measured).
  local compiled
  for compiled in "$dir"/cython-*-cp*.whl; do
    [[ -e "$compiled" ]] || continue
    local cy_version=${compiled##*/cython-}
    cy_version=${cy_version%%-*}
    run "${pipx[@]}" download -d "$dir" --no-deps --only-binary=:all: --python-version "$py_target" \
      --implementation py --platform any "cython==$cy_version"
    run rm "$compiled"
  done
  run "$python" "$repo/scripts/bundle.py" finish "$dir" "$py_target" "$numpy_version"
  echo "carry $dir to the target, then: bash scripts/install.sh --from-bundle $dir [--venv DIR | --no-venv]"
}

install_from_bundle() {
  local dir py
  if [[ ! -d "$from_bundle" ]]; then
    echo "install.sh: --from-bundle $from_bundle: no such directory" >&2; exit 2
  fi
  dir=$(cd "$from_bundle" && pwd)
  if [[ $use_venv -eq 1 ]]; then
    py="$venv/bin/python"
    if [[ ! -x "$py" ]]; then
      # --system-site-packages: the venv sees the interpreter's torch (e.g. a CUDA build) and
      # numpy, which the bundle does not carry.
      run "$python" -m venv --system-site-packages "$venv"
    fi
  else
    py=$(command -v "$python" || true)
    [[ -n "$py" ]] || { echo "install.sh: --python $python: not found" >&2; exit 2; }
  fi
  # --no-index: nothing comes from the network. The installed torch and numpy are pinned, so that
  # pip fails rather than replace them when a wheel of the bundle wants another version.
  pins=$(mktemp "${TMPDIR:-/tmp}/labo-pins.XXXXXX")
  cfg=$(mktemp "${TMPDIR:-/tmp}/labo-build.XXXXXX")
  trap 'rm -f "$pins" "$cfg"' EXIT
  local before="" after
  local probe='import torch, numpy; print(torch.__file__, torch.__version__, numpy.__file__, numpy.__version__)'
  if [[ $dry -eq 0 ]]; then
    # one import of torch (seconds for a CUDA build): the pins, and the state to compare at the end
    if ! before=$("$py" -c "$probe"'
from importlib.metadata import version  # the installed metadata: torch.__version__ may add +cu130
open("'"$pins"'", "w").write("torch==%s\nnumpy==%s\n" % (version("torch"), version("numpy")))' 2>/dev/null); then
      echo "install.sh: torch and numpy must import in $py before installing from a bundle (the bundle" \
        "never carries them): install your torch build first, or use a --python that has it" \
        "(a venv is created with --system-site-packages)" >&2
      exit 1
    fi
    "$py" "$repo/scripts/bundle.py" check "$dir"
  fi
  local pipx=("$py" -m pip install --no-index --find-links "$dir" -c "$pins")
  run "${pipx[@]}" "${build_reqs[@]}" "${extra_reqs[@]}"
  # fairseq's extensions compile here: --jobs in parallel (setuptools' build_ext --parallel, set
  # through DIST_EXTRA_CONFIG); CUDA_HOME unset, so that none of its CUDA kernels is built: they
  # need an nvcc matching torch's CUDA, take minutes, and translation does not use them.
  printf '[build_ext]\nparallel = %s\n' "$jobs" > "$cfg"
  run env -u CUDA_HOME DIST_EXTRA_CONFIG="$cfg" MAX_JOBS="$jobs" \
    "${pipx[@]}" --no-build-isolation --no-deps --no-cache-dir "$fairseq_pin"
  run "${pipx[@]}" --no-build-isolation -e "$repo[test]"
  if [[ $dry -eq 0 ]]; then
    # fairseq's compiled extensions and the plugin import; torch and numpy are those of before
    after=$("$py" -c "import sys, fairseq, fairseq.libbleu, fairseq.data.data_utils_fast, \
fairseq.data.token_block_utils_fast, labo_fairseq; sys.stderr.write('fairseq %s | labo_fairseq %s\n' \
% (fairseq.__version__, labo_fairseq.__version__)); $probe")
    if [[ "$before" != "$after" ]]; then
      echo "install.sh: torch or numpy changed during the install: before '$before', after '$after'" >&2
      exit 1
    fi
    echo "torch and numpy unchanged: $before"
  fi
}
