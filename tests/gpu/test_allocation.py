"""``labo-fairseq gpu-allocation``: the sizing rule and the pilot's timing (fast), the plan of a dry
run and bad input (fast), and the whole sequence rehearsed on CPU with ``--tiny`` (slow)."""

import json
import re

import pytest

from labo_fairseq.gpu import allocation as G
from tests.gpu.test_check import check_cpu_smoke, check_not_overwritten
from tests.helpers import MULTI30K, MULTI30K_SMALL, cli, command, write


def test_epochs_that_fit_is_capped_by_the_config_and_never_negative():
    assert G.epochs_that_fit(600, 60, 10, 30, 40) == 40  # (600 - 60 - 30) / 10 = 51 > 40
    assert G.epochs_that_fit(300, 60, 10, 30, 40) == 21  # floor(210 / 10)
    assert G.epochs_that_fit(300, 60, 11, 30, 40) == 19  # floor(210 / 11) = 19.09
    assert G.epochs_that_fit(50, 60, 10, 30, 40) == 0


def test_epoch_seconds_reads_training_start_to_the_end_of_the_first_validation(tmp_path):
    log = tmp_path / "train.log"
    write(log, ["2026-12-02 10:00:00 | INFO | fairseq_cli.train | loaded checkpoint",
                "2026-12-02 10:00:05 | INFO | fairseq_cli.train | Start iterating over samples",
                "2026-12-02 10:00:30 | INFO | train_inner | {\"epoch\": 1}",
                "2026-12-02 10:00:47 | INFO | valid | {\"epoch\": 1, \"valid_bleu\": \"3.1\"}",
                "2026-12-02 10:01:30 | INFO | valid | {\"epoch\": 2}"])
    assert G.epoch_seconds(log) == 42.0
    write(log, ["2026-12-02 10:00:05 | INFO | fairseq_cli.train | Start iterating over samples"])
    assert G.epoch_seconds(log) is None


def test_dry_run_prints_every_step_with_its_estimate_and_writes_nothing(tmp_path):
    proc = cli("gpu-allocation", "--minutes", 9, "--out", "out", "--work", "work", "--dry-run", "--source", tmp_path,
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for step in ("prepare", "check", "pilot", "runs"):
        assert re.search(rf"^gpu-allocation: {step}: \+ .*\[expected \d+ s: ", err, re.M), (step, err)
    assert "--max-epoch 1" in err  # the pilot
    m = re.search(r"-> (\d+) of the config's 40 epochs per run", err)
    assert m and 0 < int(m.group(1)) < 40, err
    assert f"--max-epoch {m.group(1)}" in err and "assumed:" in err and "measured:" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--minutes", "9", "--methods", "ls", "nope"], "unknown method 'nope'"),
    (["--minutes", "9", "--seeds", "1", "1"], "--seeds: distinct"),
    (["--minutes", "9", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["--minutes", "9", "--bundle", "no/such/dir"], "--bundle no/such/dir: no such directory or .tar.xz"),
    (["--minutes", "9", "--source", "no/such/dir"], "no such directory: no/such/dir"),
])
def test_bad_input_is_named_before_anything_runs(tmp_path, args, message):
    proc = cli("gpu-allocation", "--out", "out", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_dataset_on_other_data_is_refused_before_anything_is_trained(tmp_path):
    proc = cli("gpu-allocation", "--minutes", 9, "--out", "out", "--work", "w", "--dataset", "iwslt14_de_en",
               "--dry-run", cwd=tmp_path)
    assert proc.returncode == 1 and "needs a config on multi30k.de-en" in proc.stderr, proc.stderr
    assert "pilot" not in proc.stderr


def test_labos_tau_and_an_ablations_warmup_reach_compare_or_are_refused_before_training(tmp_path):
    proc = cli("gpu-allocation", "--minutes", 9, "--out", "out", "--work", "w", "--tau", "1.25", "--dry-run",
               cwd=tmp_path)
    assert proc.returncode == 0 and len(re.findall(r"compare .*--tau 1\.25 ", proc.stderr)) == 2, proc.stderr
    proc = cli("gpu-allocation", "--minutes", 9, "--out", "out", "--work", "w", "--methods", "labo_short_warmup",
               "--dry-run", cwd=tmp_path)
    assert proc.returncode == 1 and "multi30k_de_en_iwslt has no labo_warmup_updates_short" in proc.stderr
    assert "pilot" not in proc.stderr


def test_a_cpu_machine_is_told_to_rehearse_with_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "cuda_visible", lambda probe_torch=True: False)
    assert command("gpu-allocation", "--minutes", "9", "--out", tmp_path / "out", "--work", tmp_path / "w") == 1


def test_the_results_of_an_earlier_allocation_are_not_overwritten(tmp_path):
    write(tmp_path / "out" / "allocation.json", ["{}"])
    write(tmp_path / "out" / "results" / "multi30k_de_en_iwslt" / "ls" / "seed1.json", ["{}"])
    proc = cli("gpu-allocation", "--minutes", 9, "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2 and "holds the results of an earlier allocation" in proc.stderr


@pytest.mark.slow
def test_tiny_allocation_checks_pilots_sizes_trains_and_reports(multi30k_small, tmp_path):
    """The whole sequence on CPU: install skipped (fairseq imports), prepare skipped (the data-bin is
    there), the check, the pilot, runs sized by the pilot, evaluated, the report."""
    work = tmp_path / "work"
    for part in ("data", "data-bin"):
        (work / part).mkdir(parents=True)
        (work / part / "multi30k.de-en").symlink_to(multi30k_small / part / "multi30k.de-en")
    proc = cli("gpu-allocation", "--tiny", "--minutes", 8, "--out", "out", "--work", work, "--methods", "ls", "labo",
               "--seeds", 1, "--source", MULTI30K, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "out" / "allocation.json").read_text())
    steps = {s["step"]: s for s in rec["steps"]}
    assert steps["install"]["status"] == "skipped" and steps["prepare"]["status"] == "skipped"
    assert all(steps[s]["status"] == "ok" and steps[s]["seconds"] > 0 for s in ("check", "pilot", "runs", "report"))
    sz = rec["sizing"]
    assert sz["epoch_estimate"].startswith("measured") and sz["seconds_per_epoch"] >= 1 and 1 <= sz["epochs"] <= 40
    assert rec["provenance"]["hardware"]["cpu_cores"] >= 1 and "commit" in rec["provenance"]
    assert sorted(rec["results"]) == ["results/multi30k_de_en_iwslt/labo-tau1.15/seed1.json",
                                      "results/multi30k_de_en_iwslt/ls/seed1.json"]
    res = json.loads((tmp_path / "out" / rec["results"][1]).read_text())
    cmd = res["train"]["command"]
    from labo_fairseq.study.compare import max_epoch

    assert max_epoch(cmd) == min(sz["epochs"], 40)  # a shorter run says so in its command
    # the check: the whole CPU smoke run on this data-bin, every figure measured
    check_json = tmp_path / "out" / "gpu" / "gpu_check-cpu-smoke.json"
    check_cpu_smoke(json.loads(check_json.read_text()), (tmp_path / "out" / steps["check"]["log"]).read_text(),
                    MULTI30K_SMALL["test"])
    check_not_overwritten(check_json, work / "data-bin" / "multi30k.de-en", tmp_path, "--out", tmp_path / "out" / "gpu")
    report = json.loads((tmp_path / "out" / "results" / "compare" / "multi30k_de_en_iwslt_tiny.json").read_text())
    assert report["runs"]["ls"][0]["seed"] == 1 and report["tiny"] is True
    # nothing but small files comes back: no checkpoint under --out
    assert not list((tmp_path / "out").rglob("*.pt"))
