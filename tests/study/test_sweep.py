"""`labo-fairseq sweep`: selection, errors, dry runs (fast); a real tiny sweep on Multi30k through the
local launcher and through a real one-node SLURM cluster (`.ci/slurm.sh`), with a preemption by
`scontrol requeue` mid-training, idempotent re-submission, `sweep status` and `tables` (slow)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labo_fairseq.study import protocol, sweep
from labo_fairseq.study.protocol import tiny_model
from tests.helpers import REPO, command

# A tiny transformer and few updates on the real Multi30k data: the sweep machinery, not a result.
TINY_TRAIN = tiny_model(arch=False) + ("--max-tokens 1024 --max-update 30 --save-interval-updates 10 "
              "--no-epoch-checkpoints --log-interval 5").split()
TINY_EVAL = "--max-len-b 10"
GRID = ["--datasets", "multi30k_de_en", "--methods", "ls", "labo", "--seeds", "1"]  # 2 cells
UPDATES = 30


def run_sweep(capsys, *argv):
    rc = command("sweep", *argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------ fast: selection and errors

def test_tables_select_their_cells():
    t1 = sweep.select("1", None, None, None, None)
    assert len(t1) == 6 * (5 + 2) * 3  # 6 directions x (5 methods + LABO at 2 taus) x 3 seeds
    assert {c.tau for c in t1 if c.method == "labo"} == {None, 1.25}  # τ 1.15 is the config's: `train` without --tau
    assert {c.tau for c in t1 if c.method != "labo"} == {None}
    assert len(sweep.select("2", None, None, None, None)) == 3 * 3
    cells = sweep.select(None, ["iwslt14_de_en"], ["ls", "labo"], [1.15, 1.3], [7])
    assert [c.tag for c in cells] == ["iwslt14_de_en/ls/seed7", "iwslt14_de_en/labo/seed7",
                                      "iwslt14_de_en/labo-tau1.3/seed7"]


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "iwslt99", "--methods", "ls"], "unknown dataset 'iwslt99'; choose from"),
    (["--datasets", "iwslt14_de_en", "--methods", "lsx"], "unknown method 'lsx'; choose from"),
    (["--table", "1", "--methods", "ls"], "--table and --datasets/--methods"),
    (["--table", "3"], "unknown table '3'"),
    (["--datasets", "iwslt14_de_en", "--methods", "ls", "--tau", "1.2"], "--tau applies to the labo method only"),
    (["--datasets", "iwslt14_de_en", "--methods", "labo", "--tau", "0"], "--tau must be > 0"),
    (["--datasets", "iwslt14_de_en", "--methods", "ls", "--seeds", "1", "1"], "--seeds must be distinct"),
    (["--table", "2", "--partition", "gpu", "--time", "60"], "--partition, --time: SLURM option(s), not for --launcher local"),
    (["--table", "2", "--sbatch", "constraint=a100"], "--sbatch: SLURM option(s)"),
])
def test_clear_errors(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_sweep(capsys, *argv, "--launcher", "local", "--dry-run")
    assert rc == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_bad_slurm_values(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, message in ((["--time", "soon"], "--time 'soon'"), (["--time", "0:30"], "less than a minute"),
                          (["--gpus-per-job", "-1"], "--gpus-per-job must be >= 0"),
                          (["--array-parallelism", "0"], "--array-parallelism must be >= 1")):
        rc, _, err = run_sweep(capsys, "--table", "2", "--launcher", "slurm", "--dry-run", *argv)
        assert rc == 2 and message in err, err


def test_time_limits_in_minutes():
    assert sweep._minutes("90") == 90
    assert sweep._minutes("12:00:00") == 720
    assert sweep._minutes("1:30") == 2  # M:S, rounded up
    assert sweep._minutes("2-00") == 2880
    assert sweep._minutes("1-01:00:30") == 1501  # 1 day, 1 hour, 30 s: rounded up


def test_sbatch_not_found(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python, but no SLURM
    rc, _, err = run_sweep(capsys, "--table", "2", "--launcher", "slurm")
    assert rc == 2 and "sbatch not found on PATH" in err and "--launcher local" in err, err
    assert not (tmp_path / "runs" / ".sweep" / "jobs.json").exists()


def test_distillation_is_skipped_until_its_configs_exist(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_sweep(capsys, "--table", "distillation", "--launcher", "local", "--dry-run")
    if sweep.table_spec("distillation") is not None and "skipped" not in err:
        pytest.skip("the distillation table's configs are there: it is a table like the others")
    assert rc == 0 and "table 'distillation' is skipped" in err and "configs" in err


def test_dry_run_lists_cells_commands_and_the_sbatch_script(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_sweep(capsys, "--table", "1", "--launcher", "slurm", "--dry-run", "--partition", "gpu",
                             "--gpus-per-job", "1", "--time", "12:00:00", "--account", "mt", "--qos", "high",
                             "--sbatch", "constraint=volta32gb", "--array-parallelism", "20",
                             "--array-max-size", "100", "--runs-root", "sub/runs", "--", "--max-update", "300")
    assert rc == 0, err
    cells = re.findall(r"^# (\S+) (\S+)(?: τ=(\S+))? seed (\d+): new$", out, flags=re.M)
    assert len(cells) == 126
    train = re.findall(r"^  (\S+) -m labo_fairseq train (.*)$", out, flags=re.M)
    evaluate = re.findall(r"^  \S+ -m labo_fairseq evaluate (.*)$", out, flags=re.M)
    assert len(train) == len(evaluate) == 126
    assert train[0][1] == (f"iwslt14_de_en ce 1 --data-root {tmp_path}/data-bin --runs-root {tmp_path}/sub/runs "
                           f"--gpus 1 -- --max-update 300")
    assert any(t[1].startswith("iwslt14_de_en labo 2 --tau 1.25 ") for t in train)
    assert f"--results-root {tmp_path}/results" in evaluate[0]
    scripts = out.split("#!/bin/bash")[1:]
    assert len(scripts) == 2  # 126 jobs in arrays of at most 100
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=720",
                 "#SBATCH --account=mt", "#SBATCH --qos=high", "#SBATCH --constraint=volta32gb",
                 "#SBATCH --array=0-99%20", "#SBATCH --signal=USR2@90", "-m submitit.core._submit"):
        assert line in scripts[0], line
    assert "#SBATCH --array=0-25%20" in scripts[1]
    assert not (tmp_path / "sub").exists()  # a dry run writes nothing


def test_status_without_a_sweep_says_what_to_give(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = command("sweep", "status")
    assert rc == 2 and "no sweep recorded" in capsys.readouterr().err
    rc = command("sweep", "status", "--table", "2")
    out = capsys.readouterr().out
    assert rc == 0 and sum(ln.split()[-1:] == ["missing"] for ln in out.splitlines()) == 9 and "done 0" in out
    assert "no estimate yet for iwslt17_multi (9)" in out


def test_gpu_hours_count_training_gpus_and_gpu_decoding():
    train_s, eval_s = 5400.0, 360.0
    result = {"train": {"gpus": 8, "nodes": 2, "last_checkpoint": {"train_wall_s": train_s}},
              "evaluate": {"wall_s": eval_s, "device": "cuda"}}
    assert sweep._hours(result) == pytest.approx(((train_s * 16 + eval_s) / 3600, (train_s + eval_s) / 3600))
    result["train"]["gpus"], result["evaluate"]["device"] = 0, "cpu"  # a CPU run: no GPU-hours, its wall time
    assert sweep._hours(result) == pytest.approx((0.0, (train_s + eval_s) / 3600))


def test_last_error_prefers_the_failing_command_over_the_job_wrapper(tmp_path):
    out, err = tmp_path / "job.out", tmp_path / "job.err"
    out.write_text("| INFO | fairseq | loaded\nValueError: --labo-tau must be in (0.0, inf), got 0.0\n| INFO | done\n")
    err.write_text("submitit ERROR - Submitted job triggered an exception\nTraceback (most recent call last):\n"
                   '  File "sweep.py", line 1, in _run\nRuntimeError: train exited with status 1: python -m ...\n')
    assert sweep.last_error([str(out), str(err)]) == "ValueError: --labo-tau must be in (0.0, inf), got 0.0"
    assert sweep.last_error([str(err)]).startswith("RuntimeError: train exited with status 1")
    assert sweep.last_error([str(tmp_path / "absent")]) == "no log"


def test_cli_lists_sweep(capsys):
    from labo_fairseq import cli

    cli.main(["--help"])
    assert "sweep" in capsys.readouterr().out


# ------------------------------------------------------------------------------ slow: real sweeps

def _env(monkeypatch):
    # jobs (and SLURM, which exports the submitting environment) import this checkout; one thread per job
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _roots_args(work: Path, data_bin: Path):
    return ["--data-root", data_bin, "--runs-root", work / "runs", "--results-root", work / "results"]


def _tables(results: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", "tables", "--results", str(results)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _updates(work: Path, tag: str) -> int:
    return json.loads((work / "results" / f"{tag}.json").read_text())["train"]["last_checkpoint"]["updates"]


@pytest.mark.slow
def test_local_launcher_runs_the_tiny_sweep(capsys, tmp_path, monkeypatch, multi30k_small):
    _env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    roots = _roots_args(tmp_path, multi30k_small / "data-bin")
    # a cell that fails: its status names the error from its log, and the others still run
    rc, out, err = run_sweep(capsys, "--datasets", "multi30k_de_en", "--methods", "ls", "--seeds", "9",
                             "--launcher", "local", *roots, "--", *TINY_TRAIN, "--no-such-flag")
    assert rc == 1 and "failed" in err
    rc, out, _ = run_sweep(capsys, "status", "--datasets", "multi30k_de_en", "--methods", "ls", "--seeds", "9", *roots)
    assert re.search(r"ls\s+9\s+failed\s+local job pid \d+: .*unrecognized arguments: --no-such-flag", out), out

    rc, out, err = run_sweep(capsys, *GRID, "--launcher", "local", *roots, "--evaluate-args", TINY_EVAL, "--", *TINY_TRAIN)
    assert rc == 0, err
    assert "2 of 2 cell(s) finished" in out
    assert [_updates(tmp_path, f"multi30k_de_en/{m}/seed1") for m in ("ls", "labo")] == [UPDATES, UPDATES]
    rc, out, _ = run_sweep(capsys, *GRID, "--launcher", "local", *roots, "--", *TINY_TRAIN)
    assert rc == 0 and "nothing to run" in out  # finished cells are skipped
    rc, out, _ = run_sweep(capsys, "status", *GRID, *roots)
    assert "done 2 · running 0 · pending 0 · failed 0 · missing 0" in out
    assert re.search(r"spent: 0\.00 GPU-hours \((\d+\.\d+) hours of wall time\) on 2 finished cell", out)
    assert "estimated remaining: 0.00 GPU-hours" in out
    table = _tables(tmp_path / "results")
    assert re.search(r"\| LS \| \d+\.\d+ \(n=1\) †", table) and re.search(r"\| LABO τ=1.15 \| .*\(n=1\) †", table), table

    # a partial sweep: one more seed that has not run yet is missing in status; tables show what is there
    rc, out, _ = run_sweep(capsys, "status", *GRID[:-2], "--seeds", "1", "2", *roots)
    assert "done 2 · running 0 · pending 0 · failed 0 · missing 2" in out
    assert "multi30k_de_en: 2 cell(s) left x 0.00 GPU-h" in out


def _cluster_up() -> str:
    """Why the SLURM tests cannot run here, or '' when a cluster answers with an idle node."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM client on PATH (bash .ci/slurm.sh starts a one-node cluster, as root)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[:200]} (bash .ci/slurm.sh starts a one-node cluster)"
    if not {"idle", "mixed", "allocated"} & set(proc.stdout.split()):
        return f"no usable SLURM node (sinfo: {proc.stdout.split()})"
    return ""


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM cluster answering on this machine (CI: `.ci/slurm.sh`), else the SLURM tests skip."""
    reason = _cluster_up()
    if reason and os.environ.get("CI") == "true":  # CI starts one (.ci/slurm.sh): not answering is a failure
        pytest.fail(f"no SLURM cluster under CI=true: {reason}")
    if reason:
        pytest.skip(reason)
    return True


def _wait(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        got = predicate()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_slurm_sweep_with_preemption_and_resubmission(slurm_cluster, capsys, tmp_path, monkeypatch, multi30k_small):
    # slurm_cluster first: without a cluster the test skips before the data fixture is built
    _env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    roots = _roots_args(tmp_path, multi30k_small / "data-bin")
    submit = [*GRID, "--launcher", "slurm", "--gpus-per-job", "0", "--cpus-per-job", "1", "--time", "30",
              "--job-name", "labo-ci", *roots, "--evaluate-args", TINY_EVAL, "--", *TINY_TRAIN]
    rc, out, err = run_sweep(capsys, *submit)
    assert rc == 0 and "submitted 2 job(s)" in out, out + err
    jobs = json.loads((tmp_path / "runs" / ".sweep" / "jobs.json").read_text())
    assert len(jobs) == 2 and all(j["launcher"] == "slurm" for j in jobs.values())

    # submitting again while they are queued or running submits nothing
    rc, out, _ = run_sweep(capsys, *submit)
    assert rc == 0 and "nothing to submit" in out
    assert json.loads((tmp_path / "runs" / ".sweep" / "jobs.json").read_text()) == jobs

    # preemption: requeue one job once it has a checkpoint and before its training is over
    tag = "multi30k_de_en/ls/seed1"
    run = tmp_path / "runs" / tag
    _wait(lambda: (run / "checkpoints" / "checkpoint_last.pt").exists(), 900, f"{tag}'s first checkpoint")
    assert not protocol.training_completed(run), "training finished before the requeue: raise --max-update"
    job = jobs[tag]["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    # SLURM holds a requeued job for two minutes (BeginTime, set a moment after it is pending again:
    # "PENDING None" comes first); release it now, as an administrator may, so that the test does not wait
    def held():
        q = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
        return q.split() if q.split()[:2] == ["PENDING", "BeginTime"] or q.startswith("RUNNING") else None

    if _wait(held, 120, f"job {job} to be requeued") == ["PENDING", "BeginTime"]:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False, timeout=60)

    def all_done():
        rc, out, _ = run_sweep(capsys, "status", *GRID, *roots)
        if re.search(r"failed [1-9]", out):
            raise AssertionError(out)
        return out if "done 2 ·" in out else None

    out = _wait(all_done, 1500, "the 2 SLURM jobs")
    assert re.search(r"spent: 0\.00 GPU-hours .* on 2 finished cell", out)
    record = json.loads((run / "run.json").read_text())
    assert len(record["sessions"]) == 2  # started again by SLURM, resumed from checkpoint_last.pt
    assert "Loaded checkpoint" in (run / "train.log").read_text()
    assert [_updates(tmp_path, f"multi30k_de_en/{m}/seed1") for m in ("ls", "labo")] == [UPDATES, UPDATES]

    table = _tables(tmp_path / "results")
    assert re.search(r"\| LS \| \d+\.\d+ \(n=1\)", table), table
    assert re.search(r"\| LABO τ=1.15 \| \d+\.\d+ \(n=1\)", table), table

    rc, out, _ = run_sweep(capsys, *submit)  # idempotence: every cell is done
    assert rc == 0 and "nothing to submit" in out
    assert json.loads((tmp_path / "runs" / ".sweep" / "jobs.json").read_text()) == jobs
