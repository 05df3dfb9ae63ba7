"""provenance: what is recorded beside every result."""

import json
import os
import shlex
import subprocess
import sys

from labo_fairseq.runtime.provenance import git_state, record
from tests.helpers import REPO


def test_record_names_the_command_commit_and_hardware(monkeypatch, tmp_path):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rec = record("labo-fairseq analyze penultimate", ["data bin", "--out", tmp_path / "work" / "o", "--teacher",
                                                      tmp_path / "home" / "t.pt", "/elsewhere/x"])
    # no path of the machine: under the working directory relative to it, under home from ~/
    assert shlex.split(rec["command"]) == ["labo-fairseq", "analyze", "penultimate", "data bin", "--out", "o",
                                           "--teacher", "~/t.pt", "/elsewhere/x"]
    assert "cwd" not in rec and rec["date"][:2] == "20"
    assert {k: rec[k] for k in ("commit", "dirty", "version")} == git_state()
    if (REPO / ".git").exists():
        assert len(rec["commit"]) == 40
    assert rec["hardware"]["cpu_cores"] >= 1 and rec["hardware"]["torch"]
    assert "hardware" not in record("x", [], with_hardware=False)


def test_hardware_without_a_gpu_reads_torch_build_without_importing_it(tmp_path):
    """A CPU machine's record comes from torch's version.py, and says what importing torch says."""
    probe = ("import json, sys; from labo_fairseq.runtime.provenance import hardware; h = hardware(); "
             "loaded = 'torch' in sys.modules; import torch; "
             "print(json.dumps([h, loaded, torch.__version__, torch.version.cuda]))")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}  # no GPU visible: torch is not needed
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    h, loaded, version, cuda = json.loads(proc.stdout)
    assert loaded is False and h["gpus"] == []
    assert (h["torch"], h["cuda"]) == (version, cuda)
