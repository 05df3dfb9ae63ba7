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
    assert {"pyyaml", "sacremoses", "submitit", "tensorboardx"} <= names  # the study extra, which the commands need
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
    # --wheel-python: fairseq prebuilt for this interpreter, as a GPU node's bundle carries it
    made = subprocess.run(["bash", str(INSTALL), "--bundle", str(bundle), "--python", sys.executable,
                           "--wheel-python", sys.executable], cwd=tmp_path, env=_clean_pip_env("https://pypi.org/simple"),
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    if (Path(sys.prefix) / "wheels" / "fairseq-wheel.json").is_file():
        # the wheel scripts/install.sh kept in this venv is for these versions: not compiled again
        assert "reused, not compiled again" in made.stdout, made.stdout[-3000:]
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["python"] == pyver
    assert manifest["fairseq_wheel_built_with"] == json.loads(subprocess.run(
        [sys.executable, str(BUNDLE_PY), "built-with"], check=True, capture_output=True, text=True).stdout)
    assert manifest["bytes"] <= 64 * 2 ** 20, "the bundle must travel in 64 MiB"
    files = sorted(os.listdir(bundle))
    assert not [f for f in files if f.lower().startswith(("torch-", "numpy-", "nvidia"))]
    assert any(f.startswith("fairseq_fixed-") and f.endswith(".tar.gz") for f in files)  # the fallback
    assert any(f.startswith("fairseq_fixed-") and f"-cp{pyver.replace('.', '')}-" in f and f.endswith(".whl") for f in files)
    assert any(f.startswith("antlr4_python3_runtime-") and f.endswith(".whl") for f in files)

    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    site = subprocess.run([str(target / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "base_site.pth").write_text(str(_torch_only_site(tmp_path / "torch_site")) + "\n")

    # Offline: no index that answers (port 9 is discard), no config, no find-links but the bundle.
    offline = _clean_pip_env("http://127.0.0.1:9/simple")
    r = subprocess.run(["bash", str(INSTALL), "--from-bundle", str(bundle), "--venv", str(target)],
                       cwd=tmp_path, env=offline, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the prebuilt wheel was installed and its extensions import: nothing was compiled on the target
    assert "compiling it from the sdist" not in r.stderr and "fairseq_fixed-" in r.stdout
    assert "--no-build-isolation --no-deps --no-cache-dir --force-reinstall" not in r.stdout

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


def _wheel(path: Path, name="demo", version="1.0"):
    """A small, valid pure-Python wheel (deflated members and a RECORD of their hashes)."""
    import base64
    import hashlib
    import zipfile

    members = {f"{name}/__init__.py": b"VALUE = 42\n" + b"# padding\n" * 200,
               f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
               f"{name}-{version}.dist-info/WHEEL":
                   b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
                     for n, d in members.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    members[f"{name}-{version}.dist-info/RECORD"] = record.encode()
    whl = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in members.items():
            z.writestr(n, d)
    return whl


def test_pack_stores_the_wheels_and_unpack_restores_a_bundle_pip_installs(tmp_path):
    import zipfile

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    whl = _wheel(bundle)
    (bundle / "fairseq-wheel.json").write_text('{"python": "3.12"}')
    subprocess.run([sys.executable, str(BUNDLE_PY), "finish", str(bundle), "3.12", "2.0.0"], check=True,
                   capture_output=True)
    archive = tmp_path / "bundle.tar.xz"
    subprocess.run([sys.executable, str(BUNDLE_PY), "pack", str(bundle), str(archive)], check=True, capture_output=True)
    out = tmp_path / "unpacked"
    subprocess.run([sys.executable, str(BUNDLE_PY), "unpack", str(archive), str(out)], check=True, capture_output=True)
    assert sorted(os.listdir(out)) == sorted(os.listdir(bundle))
    got, orig = zipfile.ZipFile(out / whl.name), zipfile.ZipFile(whl)
    assert {i.compress_type for i in orig.infolist()} == {zipfile.ZIP_DEFLATED}
    assert {i.compress_type for i in got.infolist()} == {zipfile.ZIP_STORED}
    assert [(i.filename, got.read(i)) for i in got.infolist()] == [(i.filename, orig.read(i)) for i in orig.infolist()]
    packed = json.loads((out / "bundle.json").read_text())
    assert packed["packed"]["from_bytes"] == json.loads((bundle / "bundle.json").read_text())["bytes"]
    assert packed["files"][whl.name]["bytes"] == (out / whl.name).stat().st_size
    # pip takes the stored wheel: its RECORD still matches
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", str(site),
                    str(out / whl.name)], check=True, env=_clean_pip_env("http://127.0.0.1:9/simple"))
    assert (site / "demo" / "__init__.py").read_bytes().startswith(b"VALUE = 42")

    # a changed file is named, not installed
    data = (out / whl.name).read_bytes()
    (out / whl.name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'scripts')!r}); "
                        f"import bundle; bundle.check_files({str(out)!r})"], capture_output=True, text=True)
    assert r.returncode == 1 and whl.name in r.stderr and "sha256" in r.stderr


def test_unpack_refuses_what_is_not_a_bundle_archive(tmp_path):
    import io
    import tarfile

    bad = tmp_path / "evil.tar.xz"
    with tarfile.open(bad, "w:xz") as tar:
        info = tarfile.TarInfo("../outside.whl")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    r = subprocess.run([sys.executable, str(BUNDLE_PY), "unpack", str(bad), str(tmp_path / "d")], capture_output=True, text=True)
    assert r.returncode == 1 and "unexpected member" in r.stderr and not (tmp_path / "outside.whl").exists()
    (tmp_path / "plain.tar.xz").write_bytes(b"not xz")
    r = subprocess.run([sys.executable, str(BUNDLE_PY), "unpack", str(tmp_path / "plain.tar.xz"), str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a bundle archive" in r.stderr


def test_from_bundle_installs_the_prebuilt_wheel_for_this_python_else_compiles_the_sdist(tmp_path):
    def plan():
        r = subprocess.run(["bash", str(INSTALL), "--from-bundle", str(tmp_path), "--no-venv", "--python", sys.executable,
                            "--dry-run"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    sdist = "fairseq_fixed-0.12.3.1.tar.gz"
    compiles = plan()
    assert f"--no-build-isolation --no-deps --no-cache-dir --force-reinstall {tmp_path}/{sdist}" in compiles
    other = "cp%d%d" % (sys.version_info[0], sys.version_info[1] + 1)  # a wheel for another Python is not used
    (tmp_path / f"fairseq_fixed-0.12.3.1-{other}-{other}-linux_x86_64.whl").touch()
    assert sdist in plan()
    here = "cp%d%d" % sys.version_info[:2]
    wheel = tmp_path / f"fairseq_fixed-0.12.3.1-{here}-{here}-linux_x86_64.whl"
    wheel.touch()
    installs = plan()
    assert f"--no-deps --force-reinstall {wheel}" in installs and sdist not in installs


def test_from_bundle_names_an_archive_that_is_missing(tmp_path):
    r = subprocess.run(["bash", str(INSTALL), "--from-bundle", str(tmp_path / "b.tar.xz"), "--no-venv"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "b.tar.xz: no such directory (or .tar.xz" in r.stderr


def test_prune_removes_only_the_data_files_of_examples(tmp_path):
    for rel in ("fairseq/examples/hubert/tests/sample.npy", "fairseq/examples/mms/tutorial.ipynb",
                "fairseq/examples/hubert/model.py", "fairseq/data/table.png", "fairseq/models/transformer.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * 10)
    subprocess.run([sys.executable, str(BUNDLE_PY), "prune", str(tmp_path)], check=True, capture_output=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["fairseq/data/table.png", "fairseq/examples/hubert/model.py", "fairseq/models/transformer.py"]
