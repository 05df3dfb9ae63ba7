"""The offline install bundle (scripts/install.sh --bundle / --from-bundle): a round trip with the
package index unreachable, into a fresh venv that sees only this interpreter's torch and numpy."""

import json
import os
import socket
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install.sh"
BUNDLE_PY = REPO / "scripts" / "bundle.py"


def _clean_pip_env(index: str) -> dict:
    """This machine's pip configuration neutralized (global pip.conf with find-links and local
    indexes), so that the only index pip knows is `index`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _closure(names):
    """The installed distributions `names` need (their requirements, recursively, markers applied)."""
    from packaging.requirements import Requirement

    seen, todo = {}, list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _torch_only_site(dest: Path) -> Path:
    """A directory of symlinks to this interpreter's torch, numpy and their dependencies only: the
    fresh venv sees them through a .pth file, like a venv with --system-site-packages over a base
    that has torch, but without fairseq or the plugin's requirements."""
    dest.mkdir()
    for dist in _closure(["torch", "numpy"]):
        root = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = root / top
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return dest


def test_bundle_requirements_leave_out_torch_and_numpy():
    out = subprocess.run([sys.executable, str(BUNDLE_PY), "requirements", str(REPO / "pyproject.toml")],
                         check=True, capture_output=True, text=True).stdout.split()
    names = {r.split("<")[0].split(">")[0].split("=")[0].lower() for r in out}
    assert "torch" not in names and "numpy" not in names
    assert {"scikit-learn", "hydra-core", "sacrebleu", "pytest"} <= names
    assert "matplotlib" not in names  # the optional extra 'plots'


def test_from_bundle_rejects_a_directory_that_is_not_a_bundle(tmp_path):
    r = subprocess.run([sys.executable, str(BUNDLE_PY), "check", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "not a bundle" in r.stderr


def test_from_bundle_fails_early_without_torch(tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    r = subprocess.run(["bash", str(INSTALL), "--from-bundle", str(tmp_path), "--venv", str(bare)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert "torch and numpy must import" in r.stderr


@pytest.mark.slow
def test_bundle_round_trip_offline(tmp_path):
    if not _pypi_reachable():
        if os.environ.get("CI") == "true":  # under CI the round trip must run, not skip
            pytest.fail("building the bundle needs the package index, and pypi.org is unreachable (CI=true)")
        pytest.skip("building the bundle needs the package index (pypi.org unreachable)")
    import numpy
    import torch

    pyver = "%d.%d" % sys.version_info[:2]
    bundle = tmp_path / "bundle"
    subprocess.run(["bash", str(INSTALL), "--bundle", str(bundle), "--python", sys.executable],
                   check=True, cwd=tmp_path, env=_clean_pip_env("https://pypi.org/simple"))
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["python"] == pyver
    assert manifest["bytes"] <= 64 * 2 ** 20, "the bundle must travel in 64 MiB"
    files = sorted(os.listdir(bundle))
    assert not [f for f in files if f.lower().startswith(("torch-", "numpy-", "nvidia"))]
    assert any(f.startswith("fairseq_fixed-") and f.endswith(".tar.gz") for f in files)
    assert any(f.startswith("antlr4_python3_runtime-") and f.endswith(".whl") for f in files)

    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    site = subprocess.run([str(target / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "base_site.pth").write_text(str(_torch_only_site(tmp_path / "torch_site")) + "\n")

    # Offline: no index that answers (port 9 is discard), no config, no find-links but the bundle.
    offline = _clean_pip_env("http://127.0.0.1:9/simple")
    # --jobs 1: one failed link was seen with parallel extension builds on an overloaded machine
    # (passed twice since); CI's two cores gain little from it
    r = subprocess.run(["bash", str(INSTALL), "--from-bundle", str(bundle), "--venv", str(target), "--jobs", "1"],
                       cwd=tmp_path, env=offline, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    probe = ("import os, torch, numpy, fairseq, labo_fairseq, fairseq.libbleu, fairseq.data.data_utils_fast, "
             "fairseq.data.token_block_utils_fast, fairseq.libnat, fairseq.libbase;"
             "print(os.path.realpath(torch.__file__), torch.__version__, os.path.realpath(numpy.__file__),"
             " numpy.__version__, os.path.dirname(labo_fairseq.__file__), fairseq.__version__)")
    out = subprocess.run([str(target / "bin" / "python"), "-c", probe], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env=offline).stdout.split()
    assert out[:4] == [os.path.realpath(torch.__file__), torch.__version__,
                       os.path.realpath(numpy.__file__), numpy.__version__]
    assert Path(out[4]) == REPO / "labo_fairseq"
    assert out[5] == "0.12.3.1"
    # the venv's own site-packages holds no torch or numpy: the install never replaced them
    assert not [p for p in os.listdir(site) if p.lower().startswith(("torch", "numpy"))]
