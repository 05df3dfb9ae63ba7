# The offline install bundle of scripts/install.sh (--bundle, --from-bundle); sourced by it, which
# defines run, dry, python, repo, venv, use_venv, pyver, numpy_version, wheel_python, target_has, pack,
# jobs, constraints, fairseq_pin.

# Packages published only as sdists: turned into wheels here, so that the target needs no network
# and no build of them. antlr4-python3-runtime is omegaconf's (pure Python: a py3-none-any wheel).
sdist_only=("antlr4-python3-runtime==4.9.3")
# Build requirements of fairseq-fixed without build isolation (its sdist compiles on the target
# against the target's torch and numpy).
build_reqs=("cython" "setuptools<81" "wheel")

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
  # the build requirements; under constraints.txt's pins and the target's numpy.
  echo "+ $python scripts/bundle.py requirements pyproject.toml > $dir/requirements.txt (+ ${build_reqs[*]})"
  echo "+ grep hydra-core/omegaconf constraints.txt > $dir/constraints.txt (+ numpy==$numpy_version)"
  if [[ $dry -eq 0 ]]; then
    { "$python" "$repo/scripts/bundle.py" requirements "$repo/pyproject.toml"
      printf '%s\n' "${build_reqs[@]}"; } > "$dir/requirements.txt"
    { grep -E '^(hydra-core|omegaconf)==' "$constraints"
      echo "numpy==$numpy_version"; } > "$dir/constraints.txt"
  fi
  # pip download keeps what DIR already has. numpy comes along (scipy requires it): removed by
  # finish below, like anything of torch's.
  # With --target-has, the target's own versions are chosen (and left out again by finish below);
  # not for the build requirements, which keep their pins (setuptools<81).
  local has_pins=()
  if [[ -n "$target_has" ]]; then
    echo "+ grep -v build requirements $target_has > $dir/target-constraints.txt"
    if [[ $dry -eq 0 ]]; then
      grep -viE '^(setuptools|wheel|cython|pip)==' "$target_has" > "$dir/target-constraints.txt" || true
    fi
    has_pins=(-c "$dir/target-constraints.txt")
  fi
  if ! run "${pipx[@]}" download -d "$dir" --find-links "$dir" "${target[@]}" \
      -r "$dir/requirements.txt" -c "$dir/constraints.txt" "${has_pins[@]}"; then
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
  if [[ -n "$wheel_python" ]]; then
    build_fairseq_wheel "$dir" "$sdist" "$py_target"
  fi
  run "$python" "$repo/scripts/bundle.py" finish "$dir" "$py_target" "$numpy_version" ${target_has:+"$(realpath "$target_has")"}
  if [[ $pack -eq 1 ]]; then
    run "$python" "$repo/scripts/bundle.py" pack "$dir" "$dir.tar.xz"
    dir="$dir.tar.xz"
  fi
  echo "carry $dir to the target, then: bash scripts/install.sh --from-bundle $dir [--venv DIR | --no-venv]"
}

# fairseq-fixed compiled into a wheel by --wheel-python (the target's Python, torch and numpy
# versions), so that the target installs it with nothing to compile. CUDA_HOME unset: no CUDA kernel
# is built (translation does not use them), so a CPU build of the same torch gives the same wheel.
build_fairseq_wheel() {
  local dir=$1 sdist=$2 py_target=$3 got
  got=$("$wheel_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || { echo "install.sh: --wheel-python $wheel_python does not run" >&2; exit 2; }
  if [[ "$got" != "$py_target" ]]; then
    echo "install.sh: --wheel-python $wheel_python is Python $got, the bundle's target is $py_target" >&2; exit 2
  fi
  if compgen -G "$dir/fairseq_fixed-${fairseq_pin#*==}-cp${py_target/./}-*.whl" >/dev/null \
     && [[ -f "$dir/fairseq-wheel.json" ]]; then
    echo "already in the bundle: the prebuilt fairseq-fixed wheel ($(cat "$dir/fairseq-wheel.json"))"
    return
  fi
  local build kept
  build=$(mktemp -d "${TMPDIR:-/tmp}/labo-wheel.XXXXXX")
  # the wheel scripts/install.sh built when it installed fairseq into --wheel-python's venv, if it was
  # built for the same Python, torch and numpy as that venv has now: nothing to compile again
  kept="$("$wheel_python" -c 'import sys; print(sys.prefix)')/wheels"
  if [[ $dry -eq 0 && -f "$kept/fairseq-wheel.json" ]] \
     && compgen -G "$kept/fairseq_fixed-${fairseq_pin#*==}-cp${py_target/./}-*.whl" >/dev/null \
     && [[ "$(cat "$kept/fairseq-wheel.json")" == "$("$wheel_python" "$repo/scripts/bundle.py" built-with)" ]]; then
    echo "the fairseq-fixed wheel of $kept was built for these versions: reused, not compiled again"
    cp "$kept"/fairseq_fixed-*.whl "$build"/
  else
    run "$wheel_python" -m pip install "cython" "setuptools<81" "wheel"
    run env -u CUDA_HOME MAX_JOBS="$jobs" "$wheel_python" -m pip wheel --no-build-isolation --no-deps --no-cache-dir \
      -w "$build" "$sdist"
  fi
  # Debug symbols make up 9 of the wheel's 12 MB: stripped (strip --strip-debug keeps every symbol
  # the loader needs), then repacked, which rewrites the wheel's RECORD of hashes. A reused wheel,
  # built from PyPI's sdist, also loses the data files of examples/ that the bundle's sdist lacks.
  if [[ $dry -eq 0 ]]; then
    "$wheel_python" -m wheel unpack "$build"/fairseq_fixed-*.whl -d "$build/unpacked" >/dev/null
    "$python" "$repo/scripts/bundle.py" prune "$build/unpacked"
    if command -v strip >/dev/null; then
      find "$build/unpacked" -name '*.so' -exec strip --strip-debug {} +
    fi
    "$wheel_python" -m wheel pack "$build"/unpacked/fairseq_fixed-* -d "$dir"
  else
    run cp "$build"/fairseq_fixed-*.whl "$dir"/
  fi
  rm -rf "$build"
  if [[ $dry -eq 0 ]]; then
    "$wheel_python" "$repo/scripts/bundle.py" built-with > "$dir/fairseq-wheel.json"
    echo "prebuilt fairseq-fixed wheel: $(cat "$dir/fairseq-wheel.json")"
  fi
}

# fairseq's compiled extensions that translation uses: the Cython modules import only under the
# numpy ABI they were built for. libbase and libnat (torch extensions, bound to the torch version
# they were built against) are imported only by BASE layers and non-autoregressive models.
fairseq_extensions="import fairseq.libbleu, fairseq.data.data_utils_fast, fairseq.data.token_block_utils_fast"
torch_extensions="import fairseq.libbase, fairseq.libnat"

# fairseq's extensions compiled here: --jobs in parallel (setuptools' build_ext --parallel, set
# through DIST_EXTRA_CONFIG); CUDA_HOME unset, so that none of its CUDA kernels is built: they need
# an nvcc matching torch's CUDA, take minutes, and translation does not use them.
compile_fairseq_from_sdist() {
  run "${pipx[@]}" "${build_reqs[@]}"
  printf '[build_ext]\nparallel = %s\n' "$jobs" > "$cfg"
  run env -u CUDA_HOME DIST_EXTRA_CONFIG="$cfg" MAX_JOBS="$jobs" \
    "${pipx[@]}" --no-build-isolation --no-deps --no-cache-dir --force-reinstall "$dir/fairseq_fixed-${fairseq_pin#*==}.tar.gz"
}

install_from_bundle() {
  local dir py
  unpacked=""
  if [[ -f "$from_bundle" && "$from_bundle" == *.tar.xz ]]; then
    # a --pack archive: unpacked (and its files' hashes checked) into a temporary directory
    unpacked=$(mktemp -d "${TMPDIR:-/tmp}/labo-bundle.XXXXXX")
    trap 'rm -rf "$unpacked"' EXIT
    dir=$unpacked
    run "$python" "$repo/scripts/bundle.py" unpack "$from_bundle" "$dir"
  elif [[ ! -d "$from_bundle" ]]; then
    echo "install.sh: --from-bundle $from_bundle: no such directory (or .tar.xz of --bundle DIR --pack)" >&2; exit 2
  else
    dir=$(cd "$from_bundle" && pwd)
  fi
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
  trap 'rm -f "$pins" "$cfg"; [[ -z "$unpacked" ]] || rm -rf "$unpacked"' EXIT
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
  local wheel="" pytag
  pytag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  wheel=$(compgen -G "$dir/fairseq_fixed-${fairseq_pin#*==}-$pytag-*.whl" | head -n 1 || true)
  run "${pipx[@]}" "setuptools<81" "wheel"
  if [[ -n "$wheel" ]]; then
    run "${pipx[@]}" --no-deps --force-reinstall "$wheel"
  else
    compile_fairseq_from_sdist
  fi
  # the plugin and fairseq's runtime requirements, which importing fairseq needs
  run "${pipx[@]}" --no-build-isolation -e "$repo[test,study]"
  if [[ -n "$wheel" && $dry -eq 0 ]] && ! "$py" -c "$fairseq_extensions" 2>/dev/null; then
    echo "install.sh: the prebuilt fairseq in the bundle ($(cat "$dir/fairseq-wheel.json" 2>/dev/null || echo "no record"))" \
      "does not import here (torch $(sed -n 's/^torch==//p' "$pins"), numpy $(sed -n 's/^numpy==//p' "$pins"));" \
      "compiling it from the sdist instead" >&2
    compile_fairseq_from_sdist
  fi
  if [[ $dry -eq 0 ]]; then
    # fairseq's compiled extensions and the plugin import; torch and numpy are those of before
    after=$("$py" -c "$fairseq_extensions; import sys, fairseq, labo_fairseq; sys.stderr.write('fairseq %s | labo_fairseq %s\n' \
% (fairseq.__version__, labo_fairseq.__version__)); $probe
try:
    $torch_extensions
except ImportError as err:
    sys.stderr.write('install.sh: note: fairseq\'s torch extensions (libbase, libnat) do not import against this torch (%s); '
                     'only BASE layers and non-autoregressive models use them, translation does not\n' % err)")
    if [[ "$before" != "$after" ]]; then
      echo "install.sh: torch or numpy changed during the install: before '$before', after '$after'" >&2
      exit 1
    fi
    echo "torch and numpy unchanged: $before"
  fi
}
