"""provenance: what is recorded beside every result."""

import shlex

from labo_fairseq.provenance import git_state, record
from tests.helpers import REPO


def test_record_names_the_command_commit_and_hardware(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rec = record("labo-fairseq analyze penultimate", ["data bin", "--out", tmp_path / "o"])
    assert shlex.split(rec["command"]) == ["labo-fairseq", "analyze", "penultimate", "data bin", "--out",
                                           str(tmp_path / "o")]
    assert rec["cwd"] == str(tmp_path) and rec["date"][:2] == "20"
    assert {k: rec[k] for k in ("commit", "dirty", "version")} == git_state()
    if (REPO / ".git").exists():
        assert len(rec["commit"]) == 40
    assert rec["hardware"]["cpu_cores"] >= 1 and rec["hardware"]["torch"]
    assert "hardware" not in record("x", [], with_hardware=False)
