"""``labo-fairseq compare --tiny`` on the real Multi30k data: stopped by its time budget, resumed,
finished; the report's numbers come from the results JSONs and sacrebleu's paired bootstrap.
And how one call treats the training runs it starts: stopped by the budget, or failed."""

import argparse
import json
import statistics
import sys
import time

import pytest

from labo_fairseq import compare
from tests.helpers import cli


@pytest.mark.slow
def test_compare_tiny_stops_resumes_and_reports(multi30k, tmp_path):
    text, data_bin = multi30k
    (tmp_path / "data").mkdir()
    (tmp_path / "data-bin").mkdir()
    (tmp_path / "data" / "multi30k.de-en").symlink_to(text)
    (tmp_path / "data-bin" / "multi30k.de-en").symlink_to(data_bin)
    args = ["compare", "--tiny", "--seeds", 1, 2, "--bootstrap-samples", 200]

    stopped = cli(*args, "--budget-minutes", 0.05, "--reserve-s", 0, cwd=tmp_path)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert "run the same command again" in stopped.stderr
    assert not (tmp_path / "results" / "compare").exists()
    run_json = tmp_path / "runs" / "multi30k_de_en_iwslt" / "ls" / "seed1" / "run.json"
    started = run_json.is_file()  # whether the stopped call got as far as starting that run

    done = cli(*args, "--budget-minutes", 60, cwd=tmp_path, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    rep = json.loads((tmp_path / "results" / "compare" / "compare_tiny.json").read_text())
    assert rep["tiny"] is True and rep["seeds"] == [1, 2]
    assert list(rep["test_sets"]) == ["de-en", "de-en.test_2017_flickr", "de-en.test_2017_mscoco"]
    for key, per in rep["test_sets"].items():
        for method, tag in (("ls", "ls"), ("labo", "labo-tau1.15")):
            scores = [json.loads((tmp_path / "results" / "multi30k_de_en_iwslt" / tag / f"seed{s}.json").read_text())
                      ["directions"][key]["bleu"] for s in (1, 2)]
            assert per[method]["bleu"] == scores and per[method]["mean"] == pytest.approx(statistics.fmean(scores))
        d = per["labo_minus_ls"]
        assert 0.0 <= d["pooled"]["p_value"] <= 1.0 and len(d["per_seed"]) == 2
        n = {"de-en": 1000, "de-en.test_2017_flickr": 1000, "de-en.test_2017_mscoco": 461}[key]
        assert d["pooled"]["sentences"] == 2 * n and d["per_seed"][0]["sentences"] == n
    assert "TINY" in done.stdout and "| test_2017_mscoco |" in done.stdout
    for part in ("freq/freq_splits.json", "beam/beam_probs.json", "calibration_ls/calibration.json",
                 "calibration_labo/calibration.json"):
        assert (tmp_path / "analysis" / "compare" / part).is_file(), part
    # A run the budget stopped was resumed, not restarted.
    run = json.loads(run_json.read_text())
    assert len(run["sessions"]) == (2 if started else 1) and "completed" in run
    # A finished comparison is not redone: a third call only prints the report.
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "training" not in again.stderr


def _compare_training(tmp_path, monkeypatch, script):
    """A Compare (2 seeds, a 6-second budget) whose every train command is the Python ``script``."""
    a = argparse.Namespace(root=tmp_path, seeds=[1, 2], tau=1.15, budget_minutes=0.1, reserve_s=0, cpu=True,
                           dry_run=False, tiny=True)
    c = compare.Compare(a)
    monkeypatch.setattr(c, "train_cmd", lambda *run: [sys.executable, "-c", script])
    return c


def test_a_run_stopped_by_the_budget_stops_promptly_and_is_not_a_failure(tmp_path, monkeypatch):
    # 1 MiB of output (a pipe holds 64 KiB), then training goes on: the budget stops it, promptly,
    # and the call says "not finished" instead of a failure or a hang.
    c = _compare_training(tmp_path, monkeypatch, "import sys, time; sys.stderr.write('x' * 2**20); time.sleep(600)")
    start = time.monotonic()
    assert c.train() is False
    assert time.monotonic() - start < 30


def test_a_run_that_fails_by_itself_is_named_with_its_output(tmp_path, monkeypatch, capsys):
    c = _compare_training(tmp_path, monkeypatch, "import sys; sys.stderr.write('y' * 2**17 + 'boom'); sys.exit(5)")
    with pytest.raises(SystemExit):
        c.train()
    err = capsys.readouterr().err
    assert "ls seed 1 failed (exit 5)" in err and err.count("boom") == 4  # each of the 4 runs, its own output's tail
