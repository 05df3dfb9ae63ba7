"""labo_fairseq.gpu.check: its plans and commands (fast); what the whole CPU smoke run on a real data-bin
must hold (:func:`check_cpu_smoke`, applied where ``gpu-allocation --tiny`` runs it)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labo_fairseq.bench import criteria as bench
from labo_fairseq.gpu import check as gpu_check
from labo_fairseq.runtime.errors import UsageError
from tests.helpers import REPO, command


def run_check(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "labo_fairseq", "gpu-check", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=1200)


def plan(cuda, **kw):
    return gpu_check.Plan(dataclasses.replace(gpu_check.parse([], "gpu_check"), work=Path("/w"), **kw), cuda)


def test_gpu_plan_trains_ls_and_labo_in_fp16_and_bf16_and_labo_in_memory_efficient_fp16():
    runs = {r["name"]: r["args"] for r in plan(True).runs()}
    assert set(runs) == {"fp16-ls", "fp16-labo", "bf16-ls", "bf16-labo", "memory_efficient_fp16-labo"}
    for name, args in runs.items():
        precision, method = name.rsplit("-", 1)
        assert args[args.index("--arch") + 1] == "transformer_iwslt_de_en"
        assert "--" + precision.replace("_", "-") in args and "--cpu" not in args
        crit = args[args.index("--criterion") + 1]
        assert crit == {"ls": "label_smoothed_cross_entropy", "labo": "label_smoothed_labo"}[method]
        if method == "labo":
            assert args[args.index("--labo-warmup-updates") + 1] == "0"
        # only the fp16 LABO run keeps a checkpoint: the one decoding uses
        assert ("--no-save" in args) == (name != "fp16-labo")
    gen = plan(True).generate_args()
    assert "--fp16" in gen and gen[gen.index("--beam") + 1] == "5"
    assert gen[gen.index("--path") + 1].endswith("fp16-labo/checkpoint_last.pt")


def test_cpu_plan_is_fp32_on_the_cpu_and_scaled_down():
    p = plan(False)
    assert p.kind == "cpu-smoke" and p.updates < 20
    for r in p.runs():
        assert "--cpu" in r["args"] and not {"--fp16", "--bf16", "--memory-efficient-fp16"} & set(r["args"])
    assert "--cpu" in p.generate_args()
    assert "not gpu" in p.pytest_args(Path("j.xml"))


def test_skip_must_be_below_updates():
    with pytest.raises(UsageError, match="--skip-updates"):
        plan(True, updates=50, skip_updates=50)


def test_train_log_reads_both_fairseq_log_formats():
    text = ('2026-01-01 | INFO | train_inner | {"num_updates": "20", "wps": "1000"}\n'
            'INFO:train_inner:{"num_updates": "40", "wps": "1100"}\nINFO:train:{"num_updates": "40"}\n')
    assert [r["num_updates"] for r in gpu_check.train_log(text)] == ["20", "40"]


def check_main(capsys, *args):
    """labo-fairseq gpu-check in this process: (status, stdout, stderr)."""
    status = command("gpu-check", *args)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_dry_run_prints_the_commands_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = check_main(capsys, "--dry-run", "--tiny")
    assert status == 0, err
    lines = out.splitlines()
    assert sum(ln.startswith("fairseq-train ") for ln in lines) == 2
    assert sum(ln.startswith("fairseq-generate ") for ln in lines) == 1
    assert any("pytest" in ln and "labo_fairseq/gpu/device_checks.py" in ln for ln in lines)
    # paths are the user's working directory's, not the checkout's
    assert str(tmp_path / "data-bin" / "multi30k.de-en") in out
    assert not (tmp_path / "results").exists()


def test_missing_data_bin_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, _, err = check_main(capsys, "--tiny", "--data-bin", tmp_path / "nowhere", "--parts", "training")
    assert status == 2
    assert "no data-bin at" in err and "nowhere" in err
    assert not (tmp_path / "results").exists()


def test_bad_options_are_rejected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert check_main(capsys, "--updates", "0")[0] == 2
    status, _, err = check_main(capsys, "--parts", "decoding")
    assert status == 2 and "needs training" in err
    status, _, err = check_main(capsys, "--updates", "10", "--skip-updates", "10", "--dry-run")
    assert status == 2 and "--skip-updates" in err


def _numbers(obj, path=""):
    """Every (path, value) leaf of a JSON object that is a number."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_cpu_smoke(res: dict, report: str, test_sentences: int) -> None:
    """What a ``--tiny`` check on a real data-bin must hold: every part run, every figure measured
    (none faked on the CPU), ratios between different runs. ``gpu-allocation --tiny`` runs the check
    as its third step; its test (tests/gpu/test_allocation.py) applies this to the JSON it wrote."""
    assert res["kind"] == "cpu-smoke" and "NOT GPU" in res["note"] and res["ok"] is True
    assert "CPU smoke run" in report and "## Training" in report
    env = res["environment"]
    assert env["torch"] and env["python"] and env["commit"] and isinstance(env["dirty"], bool)
    assert res["command"].startswith("labo-fairseq gpu-check ")
    assert "--tiny" in res["command"].split()

    c = res["correctness"]
    assert c["failed"] == 0 and c["passed"] > 0 and c["passed"] + c["skipped"] + c["failed"] == c["collected"]

    b = res["bench"]
    assert {r["criterion"] for r in b["rows"]} == set(bench.CRITERIA)
    for r in b["rows"]:
        for k in ("ms", "time_vs_ls", "peak_mib", "peak_buffers", "extra_buffers_vs_ls"):
            assert _is_num(r[k]), (r, k)
        assert r["ms"] > 0 and r["peak_mib"] >= 0  # CPU: peak RSS above the start; 0 when the step reuses mapped memory
        assert r["time_vs_ls"] > 0
    # a measurement that always said 0 would fail: the steps with the largest logits do raise the peak
    assert any(r["peak_mib"] > 0 for r in b["rows"]), b["rows"]
    assert any(r["time_vs_ls"] != 1.0 for r in b["rows"] if r["criterion"] != bench.LS)
    assert _is_num(b["labo_time_vs_ls_max"]) and _is_num(b["labo_extra_buffers_vs_ls_max"])

    t = res["training"]
    assert set(t["runs"]) == {"fp32-ls", "fp32-labo"}
    for r in t["runs"].values():
        assert r["updates"] >= r["excluded_updates"] + 1 and r["timed_records"] >= 1
        assert r["wps_median"] > 0 and r["max_rss_mib"] > 0 and r["finite_loss"] is True
        assert _is_num(r["final_loss"]) and _is_num(r["final_nll_loss"])
        assert r["peak_gpu_mib"] is None  # no CUDA: not faked
    runs = t["runs"]
    assert t["fp32"]["wps_ratio_labo_over_ls"] == pytest.approx(runs["fp32-labo"]["wps_median"] / runs["fp32-ls"]["wps_median"])
    assert t["fp32"]["peak_memory_ratio_labo_over_ls"] > 0

    d = res["decoding"]
    assert d["test_sentences"] == test_sentences and d["hypotheses"] == test_sentences and d["all_translated"] is True

    assert all(math.isfinite(v) for _, v in _numbers(res))


def check_not_overwritten(dest: Path, data_bin: Path, cwd: Path, *out: str) -> None:
    """A second check into the same place stops, asking for --force; the JSON stays as it was."""
    before = dest.read_bytes()
    again = run_check("--tiny", "--data-bin", data_bin, "--parts", "bench", *out, cwd=cwd)
    assert again.returncode == 2 and "--force" in again.stderr
    assert dest.read_bytes() == before


def test_gpu_report_shows_every_figure():
    """The GPU report's formatting, on a result shaped as a GPU run makes it (numbers made up)."""
    def run(name, wps, mem):
        return {"name": name, "updates": 300, "wps_median": wps, "peak_gpu_mib": mem, "max_rss_mib": 1.0,
                "final_loss": 9.5, "finite_loss": True}
    res = {"kind": "gpu", "command": "python -m labo_fairseq.gpu.check", "seconds": 1.0,
           "environment": {"device": "GPU X", "driver": "1", "torch": "t", "cuda": "c", "fairseq": "f",
                           "python": "p", "commit": "abc", "dirty": False},
           "correctness": {"passed": 3, "failed": 1, "skipped": 0, "collected": 4, "selection": "-m gpu",
                           "failures": ["t::x"]},
           "training": {"runs": {"fp16-ls": run("fp16-ls", 1000.0, 2000.0), "fp16-labo": run("fp16-labo", 950.0, None)},
                        "fp16": {"wps_ratio_labo_over_ls": 0.95, "peak_memory_ratio_labo_over_ls": None},
                        "memory_efficient_fp16": {"labo_finite_loss": True}},
           "decoding": {"hypotheses": 9, "test_sentences": 10, "all_translated": False}}
    text = gpu_check.report(res)
    assert "CPU smoke" not in text and "GPU X" in text and "FAILED t::x" in text
    assert "LABO / LS words/s 0.950" in text and "| fp16-labo | 300 | 950 | n/a |" in text
    assert "9 / 10 test sentences translated (beam 5): NOT all" in text


def test_a_finished_training_run_with_the_same_arguments_is_reused(tmp_path):
    p = plan(False)
    p.work = tmp_path
    run = p.runs()[0]
    done = {"name": run["name"], "args": run["args"], "wps_median": 123.0}
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / f"{run['name']}.json").write_text(json.dumps(done))
    assert gpu_check.run_training(p, run) == done  # no fairseq started: it would need a data-bin
