"""``labo-fairseq compare --tiny`` on the real Multi30k data: stopped by its time budget, resumed,
finished; the report's numbers come from the results JSONs and sacrebleu's paired bootstrap.
And how one call treats the training runs it starts: stopped by the budget, or failed."""

import dataclasses
import json
import re
import statistics
import sys
import time

import pytest

from labo_fairseq.runtime.errors import ToolError
from labo_fairseq.study import compare
from tests.helpers import MULTI30K_SMALL, cli


@pytest.mark.slow
def test_compare_tiny_stops_resumes_and_reports(multi30k_small, tmp_path):
    """The study path on a tiny setting: train two runs at a time, stopped by the budget and resumed,
    each evaluated as it finishes, the report (also --report alone), the analyses."""
    for part in ("data", "data-bin"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "multi30k.de-en").symlink_to(multi30k_small / part / "multi30k.de-en")
    args = ["compare", "--tiny", "--methods", "ls", "labo", "--seeds", 1, 2, "--bootstrap-samples", 200,
            "--parallel", 2, "--threads", 1]
    ds = "multi30k_de_en_iwslt"
    run_json = tmp_path / "runs" / ds / "ls" / "seed1" / "run.json"
    # Stopped (SIGTERM, as a scheduler preempts) once the first run has a checkpoint: resuming is tested.
    import os
    import subprocess

    from tests.helpers import REPO
    first = subprocess.Popen([sys.executable, "-m", "labo_fairseq", *map(str, args), "--budget-minutes", "60"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    ckpt = run_json.parent / "checkpoints" / "checkpoint_last.pt"
    deadline = time.monotonic() + 600
    while not ckpt.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    first.send_signal(15)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 3, err[-3000:]
    assert "stopped by SIGTERM" in err and "run the same command again" in err
    assert not (tmp_path / "results" / "compare").exists()
    assert "completed" not in json.loads(run_json.read_text()) and ckpt.is_file()

    done = cli(*args, "--budget-minutes", 60, cwd=tmp_path, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    rep = json.loads((tmp_path / "results" / "compare" / f"{ds}_tiny.json").read_text())
    assert rep["tiny"] is True and list(rep["runs"]) == ["ls", "labo"]
    assert list(rep["test_sets"]) == ["de-en", "de-en.test_2017_flickr", "de-en.test_2017_mscoco"]
    for key, t in rep["test_sets"].items():
        for method, tag in (("ls", "ls"), ("labo", "labo-tau1.15")):
            res = [json.loads((tmp_path / "results" / ds / tag / f"seed{s}.json").read_text()) for s in (1, 2)]
            scores = [r["directions"][key]["bleu"] for r in res]
            cell = t["methods"][method]
            assert cell["bleu"]["values"] == scores and cell["bleu"]["mean"] == pytest.approx(statistics.fmean(scores))
            assert cell["chrf"]["values"] == [r["directions"][key]["chrf"] for r in res]
            assert cell["bleu"]["under_min_seeds"] is True  # 2 seeds < 3
        c = t["comparisons"]["labo_minus_ls"]
        n = {"de-en": MULTI30K_SMALL["test"], "de-en.test_2017_flickr": MULTI30K_SMALL["test1"],
             "de-en.test_2017_mscoco": MULTI30K_SMALL["test2"]}[key]
        assert c["seed_aware"]["sentences"] == n and c["seed_aware"]["seeds"] == [2, 2]
        assert c["seed_aware"]["delta"] == pytest.approx(
            statistics.fmean(t["methods"]["labo"]["bleu"]["values"]) - statistics.fmean(t["methods"]["ls"]["bleu"]["values"]),
            abs=0.01)
        assert sorted(c["per_seed"]) == ["1", "2"]
    assert "TINY" in done.stdout and "| test_2017_mscoco | chrF |" in done.stdout
    analysis = tmp_path / "analysis" / "compare" / f"{ds}_tiny"
    for part in ("freq/freq_splits.json", "beam/beam_probs.json", "penultimate/penultimate.json",
                 "calibration_ls/calibration.json", "calibration_labo/calibration.json",
                 "inference_calibration/labo/inference_calibration.json"):
        assert (analysis / part).is_file(), part
    # The run the budget stopped was resumed from its checkpoint, not restarted.
    run = json.loads(run_json.read_text())
    assert len(run["sessions"]) == 2 and "completed" in run
    # ... its second session loaded checkpoint_last with the updates the first had made
    resumed = re.findall(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)",
                         (run_json.parent / "train.log").read_text())
    assert resumed and int(resumed[-1]) > 0, "the stopped run was restarted, not resumed"
    # A finished comparison is not redone: a third call only prints the report; --report rebuilds it.
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "training" not in again.stderr
    report = cli("compare", "--tiny", "--methods", "ls", "labo", "--report", cwd=tmp_path)
    assert report.returncode == 0 and "from 4 result(s)" in report.stderr


def _compare_training(tmp_path, monkeypatch, script):
    """A Compare (2 seeds, a 6-second budget) whose every train command is the Python ``script``."""
    c = compare.Compare(compare.CompareOptions(root=tmp_path, seeds=(1, 2), tau=1.15, budget_minutes=0.1, reserve_s=0,
                                               cpu=True, tiny=True, methods=("ls", "labo")))
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
    with pytest.raises(ToolError, match="4 training run"):
        c.train()
    err = capsys.readouterr().err
    assert "ls seed 1 failed (exit 5)" in err and err.count("boom") == 4  # each of the 4 runs, its own output's tail


def test_runs_ended_by_the_same_sigterm_resume_and_are_not_failures(tmp_path, monkeypatch, capsys):
    # A preempted job: the call gets SIGTERM while its runs are training (0.5 s in), and the runs,
    # signalled too, exit 143 by themselves (1 s in) before the call reaps them (its 2-second poll).
    import threading

    c = _compare_training(tmp_path, monkeypatch, "import sys, time; time.sleep(1); sys.exit(143)")
    c.o, c.deadline = dataclasses.replace(c.o, budget_minutes=10), time.monotonic() + 600
    threading.Timer(0.5, lambda: setattr(c, "terminated", True)).start()
    assert c.train() is False  # "not finished": call again
    assert "failed" not in capsys.readouterr().err


def fake_result(tmp_path, method, seed, bleu, command=None, completed=True, keys=("de-en",), path=None):
    """A result JSON with its sentence statistics, as evaluate writes them, for the report."""
    from labo_fairseq.scoring import stats as S

    refs = [f"w{i} a b c d e f {i % 3}" for i in range(60)]
    cut = {"ce": 3, "ls": 2, "labo": 1}.get(method, 2) + seed % 2  # another method: an ablation of LABO
    st = S.sentence_stats(S.metric("bleu"), [" ".join(r.split()[:-cut]) for r in refs], refs)
    tag = "labo-tau1.15" if method == "labo" else method
    path = path or tmp_path / "results" / tag / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(f"seed{seed}.stats.json").write_text(json.dumps({"directions": {k: st for k in keys}}))
    crit = {"ce": "cross_entropy", "ls": "label_smoothed_cross_entropy"}.get(method, "label_smoothed_labo")
    cmd = command or ["fairseq-train", f"/somewhere/{seed}/data-bin/multi30k.de-en", "--arch", "transformer_iwslt_de_en",
                      "--criterion", crit, "--seed", str(seed), "--cpu"]
    d = {"bleu": bleu, "sacrebleu": bleu - 1, "chrf": bleu + 20, "convention": "tokenized",
         "paper_metric": {"signature": "tok:none"}, "sacrebleu_signature": "case:lc|tok:13a", "chrf_signature": "nc:6"}
    r = {"dataset": "multi30k_de_en_small", "method": method, "seed": seed, "directions": {k: d for k in keys},
         "sentence_stats": f"seed{seed}.stats.json", "training_completed": completed, "bleu_convention": "tokenized",
         "checkpoint": {"epoch": 20, "updates": 2660, "valid_value": 40.0},
         "validation": {"nll_loss": 2.5}, "train": {"command": cmd, "last_checkpoint": {"updates": 4000, "train_wall_s": 3600}}}
    path.write_text(json.dumps(r))
    return path


def test_report_counts_seeds_marks_small_cells_and_tests_the_pairs(tmp_path):
    found = {(m, s, 1.15 if m == "labo" else None): fake_result(tmp_path, m, s, b + s / 10)
             for m, b in (("ce", 38.0), ("ls", 39.0), ("labo", 40.0)) for s in ((1, 2, 3) if m != "labo" else (1, 2))}
    rep = compare.build_report("multi30k_de_en_small", found, 1.15, samples=200)
    cells = rep["test_sets"]["de-en"]["methods"]
    assert cells["ls"]["bleu"]["n"] == 3 and not cells["ls"]["bleu"]["under_min_seeds"]
    assert cells["labo"]["bleu"]["under_min_seeds"]
    assert cells["ls"]["bleu"]["mean"] == pytest.approx(39.2) and cells["ls"]["chrf"]["mean"] == pytest.approx(59.2)
    comp = rep["test_sets"]["de-en"]["comparisons"]
    assert comp["ls_minus_ce"]["seeds"] == [1, 2, 3] and comp["labo_minus_ls"]["seeds"] == [1, 2]
    assert comp["ls_minus_ce"]["seed_aware"]["delta"] > 0 and comp["ls_minus_ce"]["seed_aware"]["p_value"] < 0.01
    assert set(comp["labo_minus_ls"]["per_seed"][1]) == {"bootstrap", "approximate_randomization"}
    over = comp["ls_minus_ce"]["over_seeds"]  # over the training seeds: 3 + 3 seeds, 20 splits
    assert over["splits"] == 20 and over["p_value"] >= over["min_p"] == 0.1
    assert over["delta"] == pytest.approx(comp["ls_minus_ce"]["seed_aware"]["delta"], abs=1e-3)
    sa = comp["labo_minus_ls"]["seed_aware"]
    assert sa["holm_family"] == 1 and sa["p_holm"] == sa["p_value"]  # one test set: nothing to adjust
    md = compare.markdown(rep)
    assert "| test_2016_flickr | BLEU (tokenized) | 38.20 ± 0.10 (n=3) | 39.20 ± 0.10 (n=3) | 40.15 ± 0.07 (n=2) * |" in md
    assert f"| {over['p']} ({over['p_holm']:.3f}; ≥ 0.100 with these seeds) |" in md
    assert "| test_2016_flickr | LS − CE | 1, 2, 3 |" in md and "| LABO − LS | 1, 2 |" in md
    assert "| LS | 1 | 20 (2660) | – | – | BLEU 40.00 | 2.500 | 4000 | 60 min |" in md


def test_a_test_set_or_a_metric_some_results_lack_is_reported_with_the_seeds_that_have_it(tmp_path):
    keys = ("de-en", "de-en.test_2017_flickr")
    found = {("ls", s, None): fake_result(tmp_path, "ls", s, 39.0, keys=keys[:1] if s == 1 else keys) for s in (1, 2, 3)}
    r = json.loads(found[("ls", 2, None)].read_text())
    r["directions"]["de-en"]["sacrebleu"] = None  # e.g. the original references were not there
    found[("ls", 2, None)].write_text(json.dumps(r))
    rep = compare.build_report("multi30k_de_en_small", found, 1.15, samples=50)
    assert list(rep["test_sets"]) == list(keys)  # the first result lacks the second test set: it is still there
    assert rep["test_sets"]["de-en.test_2017_flickr"]["methods"]["ls"]["seeds"] == [2, 3]
    cell = rep["test_sets"]["de-en"]["methods"]["ls"]
    assert cell["bleu"]["n"] == 3 and not cell["bleu"]["under_min_seeds"]
    assert cell["sacrebleu"]["n"] == 2 and cell["sacrebleu"]["under_min_seeds"]
    md = compare.markdown(rep)
    assert "| test_2016_flickr | sacreBLEU | 38.00 ± 0.00 (n=2) * |" in md
    assert "| test_2016_flickr | BLEU (tokenized) | 39.00 ± 0.00 (n=3) |" in md


def test_each_run_says_how_it_stopped():
    from labo_fairseq.study.compare.report import run_cells
    from labo_fairseq.study.protocol import Plateau

    base = {"stopping": None, "valid_nll_bits": None, "last_updates": 10, "train_wall_s": None}
    rule = dict(patience=10, best_epoch=5, last_epoch=15, validations_since_best=10, best=30.0, cap_reached=False)
    assert run_cells({**base, "stopping": {**rule, "converged": True}})[:2] == ["15", "yes"]
    capped = {**rule, "validations_since_best": 3, "converged": False, "cap_reached": True}
    assert run_cells({**base, "stopping": capped})[1] == "no: reached the cap"
    other = {**capped, "cap_reached": False}  # e.g. --stop-time-hours
    assert run_cells({**base, "stopping": other})[1] == "no: stopped before its rule"
    assert Plateau.from_dict({**rule, "patience": 0}).verdict == "no rule"
    assert run_cells(base)[:2] == ["–", "–"]


def test_a_difference_tested_on_several_test_sets_gets_holms_adjustment(tmp_path, monkeypatch):
    keys = ("de-en", "de-en.test_2017_flickr", "de-en.test_2017_mscoco")
    found = {(m, s, 1.15 if m == "labo" else None): fake_result(tmp_path, m, s, 39.0, keys=keys)
             for m in ("ls", "labo") for s in (1, 2)}
    p_values = iter([0.01, 0.04, 0.03])  # the seed-aware test's p of each test set, in the report's order
    seeds_p = iter([0.2, 0.008, 0.05])  # the permutation test's over the seeds: a family of its own
    monkeypatch.setattr(compare.S, "seed_bootstrap", lambda *a, **k: {"p_value": next(p_values), "samples": 100,
                                                                      "base_scores": [1, 2], "system_scores": [3, 4]})
    monkeypatch.setattr(compare.S, "seed_permutation", lambda *a: {"p_value": next(seeds_p)})
    rep = compare.build_report("multi30k_de_en_small", found, 1.15, samples=100)
    tests = [rep["test_sets"][k]["comparisons"]["labo_minus_ls"]["seed_aware"] for k in keys]
    assert [t["holm_family"] for t in tests] == [3, 3, 3]
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, kept at 0.06 (step-down is monotone)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.03, 0.06, 0.06])
    over = [rep["test_sets"][k]["comparisons"]["labo_minus_ls"]["over_seeds"]["p_holm"] for k in keys]
    assert over == pytest.approx([0.2, 0.024, 0.1])  # 0.008 x 3; 0.05 x 2; 0.2 x 1, kept


def test_a_rebuilt_report_may_add_results_but_not_leave_any_out(tmp_path):
    found = {(m, s, 1.15 if m == "labo" else None): fake_result(tmp_path, m, s, 39.0)
             for m in ("ls", "labo") for s in (1, 2)}
    c = compare.Compare(compare.CompareOptions(root=tmp_path, seeds=(1, 2), tau=1.15, budget_minutes=1, cpu=True,
                                               dry_run=True, methods=("ls", "labo"), dataset="multi30k_de_en_small"))
    fewer = dict(list(found.items())[:3])
    path = compare.write_report(c, compare.build_report(c.dataset, fewer, 1.15, samples=50))
    assert path == tmp_path / "results" / "compare" / "multi30k_de_en_small.json"
    compare.write_report(c, compare.build_report(c.dataset, found, 1.15, samples=50))  # one more: fine
    with pytest.raises(compare.ReportError, match=r"has results this report would leave out \(labo seed 2\)"):
        compare.write_report(c, compare.build_report(c.dataset, fewer, 1.15, samples=50))
    assert len(json.loads(path.read_text())["results"]) == 4
    c.o = dataclasses.replace(c.o, force=True)
    compare.write_report(c, compare.build_report(c.dataset, fewer, 1.15, samples=50))
    assert len(json.loads(path.read_text())["results"]) == 3


def test_tiny_shortens_labos_warmup_but_never_lengthens_an_ablations(tmp_path):
    c = compare.Compare(compare.CompareOptions(root=tmp_path, seeds=(1,), tau=1.15, budget_minutes=1, cpu=True,
                                               dry_run=True, tiny=True, methods=("labo", "labo_no_warmup"),
                                               dataset="multi30k_de_en_small"))

    def warmup(method):
        cmd = c.train_cmd(method, 1, c.tau(method))
        return cmd[len(cmd) - 1 - cmd[::-1].index("--labo-warmup-updates") + 1]

    assert warmup("labo") == "8" and warmup("labo_no_warmup") == "0"


def test_an_ablation_is_tested_against_labo_and_reported_apart(tmp_path):
    found = {(m, s, 1.15 if m == "labo" else None): fake_result(tmp_path, m, s, 39.0)
             for m in ("ls", "labo", "labo_fixed_alpha") for s in (1, 2)}
    found[("labo_no_warmup", 1, None)] = fake_result(tmp_path, "labo_no_warmup", 1, 39.0)
    rep = compare.build_report("multi30k_de_en_small", found, 1.15, samples=100)
    comp = rep["test_sets"]["de-en"]["comparisons"]
    assert set(comp) == {"labo_minus_ls", "labo_fixed_alpha_minus_labo", "labo_no_warmup_minus_labo"}
    assert comp["labo_fixed_alpha_minus_labo"]["seeds"] == [1, 2] and comp["labo_no_warmup_minus_labo"]["seeds"] == [1]
    assert comp["labo_fixed_alpha_minus_labo"]["seed_aware"]["delta"] < 0  # it drops one word more than LABO
    md = compare.markdown(rep)
    assert "| test_2016_flickr | LABO α=0.1 − LABO | 1, 2 | -" in md and "| LABO no warm-up | 1 |" in md
    names = {(ms, t, tiny): compare.report_name("multi30k_de_en_small", ms, t, tiny)
             for ms in (("ce", "ls", "labo"), ("labo", "labo_rho1")) for t in (1.15, 1.25) for tiny in (False, True)}
    assert names[("ce", "ls", "labo"), 1.15, False] == "multi30k_de_en_small"
    assert names[("labo", "labo_rho1"), 1.25, True] == "multi30k_de_en_small_tau1.25_ablations_tiny"
    assert len(set(names.values())) == len(names)  # another tau, ablations or --tiny: another report
    assert compare.report_name("multi30k_de_en_small", ("ce", "ls"), 1.25) == "multi30k_de_en_small"  # no LABO in it


@pytest.mark.parametrize("args,error", [
    (["--dataset", "multi30k_de_en_small", "--methods", "labo", "labo_rho1", "--tau", "1.25"],
     "--tau 1.25: the ablations of LABO (labo_rho1) run at LABO's config's tau (1.15)"),
    (["--methods", "labo_short_warmup"],
     "--methods: dataset multi30k_de_en_iwslt has no labo_warmup_updates_short, which method labo_short_warmup needs"),
    (["--methods", "labo_nothing"], "--methods: unknown method 'labo_nothing'"),
])
def test_ablations_that_cannot_run_as_asked_are_refused_at_startup(args, error, tmp_path):
    done = cli("compare", *args, "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and error in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())


def test_report_refuses_runs_of_other_configs_and_names_them(tmp_path):
    found = {("ls", 1, None): fake_result(tmp_path, "ls", 1, 39.0),
             ("labo", 1, 1.15): fake_result(tmp_path, "labo", 1, 40.0, command=[
                 "fairseq-train", "/x/data-bin/multi30k.de-en", "--arch", "transformer", "--criterion", "label_smoothed_labo"])}
    with pytest.raises(compare.ReportError, match=r"labo-tau1.15/seed1.json and .*ls/seed1.json were trained with "
                                                  r"different configs or data"):
        compare.build_report("multi30k_de_en_small", found, 1.15)


def test_protocol_key_ignores_method_seed_and_place():
    a = ["fairseq-train", "/a/data-bin/m", "--lr", "1e-3", "--criterion", "label_smoothed_labo", "--labo-tau", "1.25",
         "--label-smoothing", "0.1", "--seed", "3", "--save-dir", "/a/runs/x", "--cpu"]
    b = ["fairseq-train", "/b/data-bin/m", "--lr", "1e-3", "--criterion", "cross_entropy", "--seed", "1",
         "--save-dir", "/b/runs/y", "--fp16"]
    assert compare.protocol_key(a) == compare.protocol_key(b) == ("m", "--lr", "1e-3")
    assert compare.protocol_key(b[:3] + ["2e-3"]) != compare.protocol_key(b)


def test_plateau_rule_of_the_pilot():
    def curve(values):
        return [{"epoch": i + 1, "bleu": v} for i, v in enumerate(values)]

    rising = curve([10 + i for i in range(30)])
    flat_at_12 = curve([10 + min(i, 11) * 2 for i in range(30)])  # best 32 from epoch 12 on
    assert compare.plateau_epoch({"ce": flat_at_12}) == 25  # epoch 22: 32 - 32 < 0.2, rounded up to 25
    assert compare.plateau_epoch({"ce": flat_at_12, "ls": rising}) is None  # LS still rising
    noisy = curve([20, 25, 30, 29, 31, 30.5, 31.1, 30, 31.15, 30.9, 31.1, 31.2, 31.0, 31.1, 31.25, 31.2, 31.2])
    assert compare.plateau_epoch({"ls": noisy[:16]}) is None  # epoch 16: 31.25 vs 31.0 at 6: +0.25
    assert compare.plateau_epoch({"ls": noisy}) == 20  # epoch 17: 31.25 vs 31.1 at 7: +0.15


def test_results_from_several_directories_are_collected_and_a_seed_found_twice_is_refused(tmp_path):
    for d, seeds in (("a1", (1, 2)), ("a2", (3,))):
        for m, tag in (("ls", "ls"), ("labo", "labo-tau1.15")):
            for s in seeds:
                path = tmp_path / d / "ds" / tag / f"seed{s}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
                (path.parent / f"seed{s}.stats.json").write_text("{}")  # not a result
    found = compare.results_in([tmp_path / "a1", tmp_path / "a2"], "ds", ["ls", "labo"], 1.15)
    assert sorted(found) == sorted((m, s, 1.15 if m == "labo" else None) for m in ("ls", "labo") for s in (1, 2, 3))
    assert found[("ls", 3, None)] == tmp_path / "a2" / "ds" / "ls" / "seed3.json"
    with pytest.raises(compare.ReportError, match="ls seed 1 is in .* and in "):
        compare.results_in([tmp_path / "a1", tmp_path / "a1"], "ds", ["ls"], 1.15)


def test_the_report_finds_labo_wherever_train_put_it_and_names_each_runs_metric_and_convergence(tmp_path):
    # train without --tau writes labo/, compare's runs labo-tau1.15/: both are LABO at its default tau
    ls = fake_result(tmp_path / "a", "ls", 1, 30.0)
    labo = fake_result(tmp_path / "b", "labo", 1, 31.0)
    res = tmp_path / "results" / "multi30k_de_en_small"
    for src, tag in ((ls, "ls"), (labo, "labo")):
        (res / tag).mkdir(parents=True)
        for f in src.parent.iterdir():
            (res / tag / f.name).write_bytes(f.read_bytes())
    r = json.loads((res / "labo" / "seed1.json").read_text())
    r["checkpoint"].update(valid_metric="nll_loss", valid_value=2.9)
    r["train"]["stopping"] = {"patience": 10, "best_epoch": 148, "last_epoch": 150, "validations_since_best": 2,
                              "best": 2.9, "converged": False, "cap_reached": True}
    (res / "labo" / "seed1.json").write_text(json.dumps(r))
    found = compare.results_in([tmp_path / "results"], "multi30k_de_en_small", ["ls", "labo"], 1.15)
    assert sorted(found) == [("labo", 1, 1.15), ("ls", 1, None)]
    rep = compare.build_report("multi30k_de_en_small", found, 1.15, samples=50)
    md = compare.markdown(rep)
    assert "| LABO | 1 | 20 (2660) | 150 | no: reached the cap | NLL (bits) 2.90 |" in md
    assert "| LS | 1 | 20 (2660) | – | – | BLEU 40.00 |" in md and " §" in md
    (res / "labo-tau1.15").mkdir()
    (res / "labo-tau1.15" / "seed1.json").write_text("{}")
    with pytest.raises(compare.ReportError, match="labo seed 1 is in"):
        compare.results_in([tmp_path / "results"], "multi30k_de_en_small", ["ls", "labo"], 1.15)


def test_the_report_keeps_each_runs_validation_curve_and_draws_mean_and_range(tmp_path):
    pytest.importorskip("matplotlib")
    from labo_fairseq.study.analysis.plots import validation_curves
    from tests.helpers import png_size

    found = {}
    for m in ("ls", "labo"):
        for s in (1, 2):
            path = fake_result(tmp_path, m, s, 30.0)
            r = json.loads(path.read_text())
            r["validation_curve"] = [{"epoch": e, "bleu": 10.0 * e + s, "nll_loss": 3.0} for e in range(1, 4 + s)]
            path.write_text(json.dumps(r))
            found[(m, s, 1.15 if m == "labo" else None)] = path
    rep = compare.build_report("multi30k_de_en_small", found, 1.15, samples=50)
    assert rep["curves"]["LS"]["2"] == [[e, 10.0 * e + 2] for e in range(1, 6)]
    assert list(rep["curves"]) == ["LS", "LABO"]  # the methods' order, as in every table and figure
    png = validation_curves(rep["curves"], tmp_path / "curves.png")
    assert png_size(png) == (640, 480)


def test_a_call_with_more_seeds_than_the_written_report_rebuilds_it(tmp_path, monkeypatch, capsys):
    """A report written by a call on seed 1 (to analyse its checkpoints) is stale once seed 2 is in,
    or once a run was evaluated again: the next call rebuilds it rather than print the old one. A
    report naming runs the call does not is kept, and the call goes on."""
    import os

    from labo_fairseq.study.compare import command

    opts = compare.CompareOptions(root=tmp_path, seeds=(1,), tau=1.15, budget_minutes=1, cpu=True,
                                  methods=("ls", "labo"), dataset="multi30k_de_en_small", bootstrap_samples=50,
                                  no_analysis=True)
    for step in ("prepare", "train", "evaluate"):  # the runs are done: only the report is at stake
        monkeypatch.setattr(compare.Compare, step, lambda self: True)
    one = compare.Compare(opts)
    for m, s in (("ls", 1), ("labo", 1), ("ls", 2), ("labo", 2)):
        fake_result(tmp_path, m, s, 39.0, path=one.result(m, s, one.tau(m)))
    assert command._run(one) == 0 and one.report_is_current()
    path = one.report_path()
    assert sorted(json.loads(path.read_text())["results"]) == ["labo seed 1", "ls seed 1"]
    both = compare.Compare(dataclasses.replace(opts, seeds=(1, 2)))
    assert not both.report_is_current()
    assert command._run(both) == 0
    assert sorted(json.loads(path.read_text())["results"]) == ["labo seed 1", "labo seed 2", "ls seed 1", "ls seed 2"]
    assert both.report_is_current() and one.report_is_current()  # seed 1 alone is in the fuller report
    again = one.result("ls", 1, None)
    os.utime(again, (path.stat().st_mtime + 5,) * 2)  # evaluated again after the report was written
    assert not one.report_is_current()
    capsys.readouterr()
    assert command._run(one) == 0  # it would leave seed 2 out: the fuller report stays
    assert "report not rebuilt" in capsys.readouterr().err and len(json.loads(path.read_text())["results"]) == 4


def test_a_lost_work_directory_resumes_from_the_kept_results(tmp_path, monkeypatch, capsys):
    """With --results-from in a training call, a run whose result was kept (committed) is neither
    trained nor evaluated again, the report takes it, and the analyses, which need its checkpoint,
    are skipped with a line saying why."""
    from labo_fairseq.study.compare import command

    monkeypatch.chdir(tmp_path)
    kept = tmp_path / "checkout" / "results"
    ds = "multi30k_de_en_small"
    for m, s in (("ls", 1), ("labo", 1)):
        tag = "labo-tau1.15" if m == "labo" else m
        fake_result(tmp_path, m, s, 39.0, path=kept / ds / tag / f"seed{s}.json")
    o_args = ["compare", "--dataset", ds, "--methods", "ls", "labo", "--seeds", "1", "2", "--root", str(tmp_path / "work"),
              "--cpu", "--results-from", str(kept), "--bootstrap-samples", "50"]
    o = command.parse(o_args[1:], "compare")
    c = compare.Compare(o)
    assert [(m, s) for m, s, _ in c.runs() if not c.finished(m, s, c.tau(m))] == [("ls", 2), ("labo", 2)]
    assert c.result("labo", 1, 1.15) == kept / ds / "labo-tau1.15" / "seed1.json"
    assert c.result("labo", 2, 1.15) == tmp_path / "work" / "results" / ds / "labo-tau1.15" / "seed2.json"
    commands = []
    monkeypatch.setattr(compare.Compare, "prepare", lambda self: True)
    monkeypatch.setattr(compare.Compare, "run_one", lambda self, cmd: commands.append(cmd[3:6]) or True)

    def train_the_rest(self):  # what train() does for seed 2: each finished run evaluated at once
        for m, s, t in self.runs():
            if not self.finished(m, s, t):
                fake_result(tmp_path, m, s, 40.0, path=self.result(m, s, t))
        return True

    monkeypatch.setattr(compare.Compare, "train", train_the_rest)
    capsys.readouterr()
    assert command._run(c) == 0
    assert commands == []  # nothing evaluated again: seed 1 is kept, seed 2 was evaluated by train
    rep = json.loads(c.report_path().read_text())
    assert sorted(rep["results"]) == ["labo seed 1", "labo seed 2", "ls seed 1", "ls seed 2"]
    assert rep["results"]["ls seed 1"] == f"checkout/results/{ds}/ls/seed1.json"  # named as on any machine
    err = capsys.readouterr().err
    assert "analysis skipped: no checkpoint of ls seed 1, labo seed 1" in err
    assert c.report_is_current()  # the report names its results as found, from the working directory
    shown = cli(*o_args, "--dry-run", cwd=tmp_path)
    assert shown.returncode == 0 and "train multi30k_de_en_small" not in shown.stderr  # all four are kept or done


def test_status_says_where_each_run_stands(tmp_path, monkeypatch):
    """A finished run's result with where its rule stopped it, a run training (its epoch, best so far
    and the validations since against the patience, read off its log), a run not started."""
    from labo_fairseq.study.compare import command

    monkeypatch.chdir(tmp_path)
    o = command.parse(["--dataset", "multi30k_de_en_converged", "--methods", "ls", "labo", "--seeds", "1",
                       "--root", "work"], "compare")
    c = compare.Compare(o)
    done = fake_result(tmp_path, "ls", 1, 39.0, path=c.result("ls", 1, None))
    r = json.loads(done.read_text())
    r["train"]["stopping"] = {"patience": 10, "best_epoch": 25, "last_epoch": 35, "validations_since_best": 10,
                              "best": 39.5, "converged": True, "cap_reached": False}
    done.write_text(json.dumps(r))
    rd = c.roots.runs / "multi30k_de_en_converged" / "labo-tau1.15" / "seed1"
    rd.mkdir(parents=True)
    (rd / "run.json").write_text(json.dumps({"command": ["fairseq-train", "--best-checkpoint-metric", "bleu",
                                                         "--maximize-best-checkpoint-metric", "--patience", "10",
                                                         "--max-epoch", "150"]}))
    (rd / "train.log").write_text("".join(f'2026-12-06 | INFO | valid | {{"epoch": {e}, "valid_bleu": "{b}", '
                                          f'"valid_num_updates": "{133 * e}"}}\n'
                                          for e, b in ((1, 20.0), (2, 31.5), (3, 30.9), (4, 31.2))))
    assert compare.status(c) == [
        "LS seed 1: done: work/results/multi30k_de_en_converged/ls/seed1.json "
        "(epoch 35, best 39.5 at epoch 25, 10/10 validations since, converged)",
        "LABO seed 1: training: epoch 4, best 31.5 at epoch 2, 2/10 validations since",
    ]
    o2 = command.parse(["--dataset", "multi30k_de_en_converged", "--methods", "ce", "--seeds", "2", "--root", "work"],
                       "compare")
    assert compare.status(compare.Compare(o2)) == ["CE seed 2: not started"]
    shown = cli("compare", "--dataset", "multi30k_de_en_converged", "--methods", "ls", "labo", "--seeds", 1,
                "--root", "work", "--status", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.splitlines() == compare.status(c)
    assert not (tmp_path / "work" / "data-bin").exists()  # nothing prepared or run


@pytest.mark.parametrize("args,error", [
    (["--status", "--report"], "--report and --status: one at a time"),
    (["--tiny", "--results-from", "."], "--results-from with --tiny: the kept results were trained under"),
    (["--max-epoch", "3", "--results-from", "."], "--results-from with --max-epoch"),
])
def test_calls_that_would_mix_modes_or_protocols_are_refused_at_startup(args, error, tmp_path):
    done = cli("compare", *args, "--root", "work", cwd=tmp_path)
    assert done.returncode == 2 and error in done.stderr, done.stderr
    assert not (tmp_path / "work").exists()
