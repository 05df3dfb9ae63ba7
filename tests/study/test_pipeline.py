"""The reproduction pipeline on real text: train -> evaluate -> tables run from a directory outside
the checkout (everything lands under it), two seeds, resume, refusal to overwrite, 2 CPU ranks
through `labo-fairseq train`, and the IWSLT'17 multilingual evaluation (sacrebleu
against the raw references)."""

import json
import statistics
import subprocess
import sys

import pytest

from labo_fairseq.scoring import bleu as B
from labo_fairseq.study.protocol import tiny_model
from tests.helpers import REPO, cli

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
pytestmark = pytest.mark.slow

MODEL = tiny_model(arch=False) + ("--lr 2e-3 --warmup-updates 5 --max-tokens 1000 --num-workers 0 "
         "--log-interval 1").split()
TINY = ["--arch", "transformer", "--share-all-embeddings", *MODEL,
        "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}']


def script(name, *args):
    """The quickstart script, or the ``labo-fairseq`` subcommand NAME, run from the checkout."""
    cmd = ["bash", str(REPO / "scripts" / "quickstart.sh")] if name == "quickstart" else \
        [sys.executable, "-m", "labo_fairseq", name]
    return subprocess.run([*cmd, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=900)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def roots(data_bin, tmp_path_factory):
    """A --data-root holding the small real IWSLT'14 data-bin under the paper's name."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "data-bin").mkdir()
    (root / "data-bin" / "iwslt14.de-en").symlink_to(data_bin)
    return root


def where(root):
    return ["--data-root", root / "data-bin", "--runs-root", root / "runs"]


def test_train_evaluate_tables_over_two_seeds_with_resume_and_no_clobber(roots, small_text):
    """Run in the user's directory (``roots``, outside the checkout) with no path flags: the run, its
    checkpoints and its results all land under it, none in the checkout."""
    results = roots / "results"
    for seed in (1, 2):
        ok(cli("train", "iwslt14_de_en", "ls", seed, "--", *TINY, "--max-update", 12, cwd=roots))
        ok(cli("evaluate", "iwslt14_de_en", "ls", seed, cwd=roots))
    assert (roots / "runs" / "iwslt14_de_en" / "ls" / "seed1" / "checkpoints" / "checkpoint_best.pt").is_file()
    assert not (REPO / "runs").exists() and not (REPO / "results" / "iwslt14_de_en").exists()

    refs = [(ln + " ").replace("@@ ", "").rstrip() for ln in (small_text / "test.en").read_text().splitlines()]
    scores = []
    for seed in (1, 2):
        text = (results / "iwslt14_de_en" / "ls" / f"seed{seed}.json").read_text()
        assert str(roots) not in text and str(REPO) not in text  # files named relative to the root: any machine
        r = json.loads(text)
        assert (r["dataset"], r["method"], r["seed"], r["bleu_convention"]) == ("iwslt14_de_en", "ls", seed, "tokenized")
        assert r["hyper_parameters"]["criterion"] == "label_smoothed_cross_entropy"
        assert r["hyper_parameters"]["label_smoothing"] == "0.1" and r["hyper_parameters"]["seed"] == str(seed)
        assert r["checkpoint"]["updates"] <= 12 and r["train"]["last_checkpoint"]["updates"] == 12
        assert r["checkpoint"]["valid_metric"] == "bleu" and r["train"]["last_checkpoint"]["train_wall_s"] > 0
        assert len(r["train"]["commit"]) == 40 and r["evaluate"]["commit"] == r["train"]["commit"]
        assert r["train"]["hardware"]["cpu_cores"] >= 1 and "torch" in r["evaluate"]["hardware"]
        assert r["evaluate"]["wall_s"] > 0 and r["evaluate"]["beam"] == 5
        d = r["directions"]["de-en"]
        assert d["sentences"] == 50 and "tok:none" in d["paper_metric"]["signature"]
        assert "BLEU4" in d["fairseq_bleu_line"]
        # this data-bin was made without `prepare` (no original references): no sacreBLEU, never a rebuilt one
        assert d["sacrebleu"] is None and d["chrf"] is None and "no original references" in d["sacrebleu_note"]
        assert d["command"][d["command"].index("--beam") + 1] == "5"
        # The number is the hypotheses' BLEU: recomputed here from the kept file and the reference text.
        hyps = (results / "iwslt14_de_en" / "ls" / d["hypotheses"]).read_text().splitlines()
        assert len(hyps) == 50 and d["bleu"] == B.tokenized_bleu(hyps, refs)["bleu"]
        scores.append(d["bleu"])

    table = ok(cli("tables", cwd=roots)).stdout
    ls_row = next(ln for ln in table.splitlines() if ln.startswith("| LS |"))
    mean, std = statistics.fmean(scores), statistics.stdev(scores)
    assert f"{mean:.2f} ± {std:.2f} (n=2) † · paper 34.5±0.14 · Δ {mean - 34.5:+.2f}" in ls_row
    assert "missing · paper 28.3±0.16" in ls_row  # EN-DE: no run, so no number

    # A finished result is never overwritten without --force: evaluating again does nothing and says so.
    first = (results / "iwslt14_de_en" / "ls" / "seed1.json").read_bytes()
    again = cli("evaluate", "iwslt14_de_en", "ls", 1, cwd=roots)
    assert again.returncode == 0 and "already evaluated, nothing to do (--force" in again.stderr
    assert (results / "iwslt14_de_en" / "ls" / "seed1.json").read_bytes() == first
    same = ok(cli("train", "iwslt14_de_en", "ls", 1, "--", *TINY, "--max-update", 12, cwd=roots))  # again
    assert "has finished training" in same.stderr and "Loaded checkpoint" not in same.stdout

    # More updates for a finished run: the same run directory continues from checkpoint_last.pt.
    resumed = ok(cli("train", "iwslt14_de_en", "ls", 1, "--", *TINY, "--max-update", 15, cwd=roots))
    assert "training on to --max-update 15" in resumed.stderr and "Loaded checkpoint" in resumed.stdout
    run = json.loads((roots / "runs" / "iwslt14_de_en" / "ls" / "seed1" / "run.json").read_text())
    assert len(run["sessions"]) == 2
    ok(cli("evaluate", "iwslt14_de_en", "ls", 1, "--checkpoint", "last", "--force", cwd=roots))
    r = json.loads((results / "iwslt14_de_en" / "ls" / "seed1.json").read_text())
    assert r["checkpoint"]["updates"] == 15 and r["train"]["sessions"] == 2
    assert [p["started"] for p in r["train"]["processes"]] == [s["started"] for s in run["sessions"]]  # each process


def test_two_cpu_ranks_through_the_train_command(roots):
    ok(script("train", "iwslt14_de_en", "labo", 3, "--procs", 2, *where(roots), "--",
              *TINY, "--max-update", 6, "--labo-warmup-updates", 3, "--disable-validation"))
    rd = roots / "runs" / "iwslt14_de_en" / "labo" / "seed3"
    log0, log1 = (rd / "train.log").read_text(), (rd / "train.rank1.log").read_text()
    assert "distributed init (rank 0)" in log0 and "distributed init (rank 1)" in log1
    inner = [json.loads(ln.split("| train_inner | ")[1]) for ln in log0.splitlines() if "| train_inner | " in ln]
    assert [int(r["num_updates"]) for r in inner] == list(range(1, 7))
    assert max(float(r["wpb"]) for r in inner) > 1000  # both ranks' batches: more than one rank's --max-tokens
    assert [float(r["labo_active"]) for r in inner] == [0, 0, 0, 1, 1, 1]
    assert (rd / "checkpoints" / "checkpoint_last.pt").is_file()
    assert json.loads((rd / "run.json").read_text())["procs"] == 2


def test_evaluate_errors_name_what_is_missing(roots):
    no_run = script("evaluate", "iwslt14_en_de", "cp", 1, *where(roots))
    assert no_run.returncode == 2 and "no run here" in no_run.stderr and "labo-fairseq train iwslt14_en_de cp 1" in no_run.stderr
    unknown = script("evaluate", "iwslt99", "ls", 1)
    assert unknown.returncode == 2 and "unknown dataset 'iwslt99'" in unknown.stderr
    for args, message in ((("--batch-size", 0), "--batch-size must be >= 1, got 0"),
                          (("--tau", 1.25), "--tau applies to the labo method only")):
        bad = script("evaluate", "iwslt14_de_en", "ls", 1, *where(roots), *args)
        assert bad.returncode == 2 and message in bad.stderr


def test_iwslt17_multilingual_is_scored_with_sacrebleu_on_raw_references(iwslt17_standin, tmp_path):
    text, bin_dir, _ = iwslt17_standin
    runs, results = tmp_path / "runs", tmp_path / "results"
    ok(script("train", "iwslt17_multi", "labo", 1, "--data-root", bin_dir.parent, "--runs-root", runs, "--",
              "--arch", "multilingual_transformer", *MODEL, "--max-update", 4, "--labo-warmup-updates", 2))
    ok(script("evaluate", "iwslt17_multi", "labo", 1, "--data-root", bin_dir.parent, "--runs-root", runs,
              "--text-root", text.parent, "--results-root", results, "--", "--max-len-a", 0, "--max-len-b", 8))
    r = json.loads((results / "iwslt17_multi" / "labo" / "seed1.json").read_text())
    assert r["bleu_convention"] == "sacrebleu" and r["extra_generate_args"] == ["--max-len-a", "0", "--max-len-b", "8"]
    for pair, n in (("de-en", 1138), ("fr-en", 1455)):
        d = r["directions"][pair]
        assert d["sentences"] == n and d["raw_references"] == str(text / "raw" / f"test0.{pair}.en")
        assert d["command"][d["command"].index("--remove-bpe") + 1] == "sentencepiece"
        hyps = (results / "iwslt17_multi" / "labo" / d["hypotheses"]).read_text().splitlines()
        refs = (text / "raw" / f"test0.{pair}.en").read_text(encoding="utf-8").splitlines()
        assert not any("▁" in h for h in hyps)  # sentencepiece removed: detokenized text
        assert d["bleu"] == d["sacrebleu"] == B.sacrebleu_13a(hyps, refs)["bleu"]
    table = ok(script("tables", "--results", results)).stdout
    assert "(n=1) † · paper 28.4" in table and "(n=1) † · paper 37.2" in table


def test_quickstart_dry_run_prints_every_command_and_writes_nothing(tmp_path):
    work = tmp_path / "qs"
    proc = ok(script("quickstart", "--work", work, "--updates", 50, "--labo-warmup", 10, "--dry-run"))
    printed = proc.stderr.splitlines()
    assert [ln.split()[4] for ln in printed if ln.startswith("+ ")] == [
        "prepare", "train", "evaluate", "train", "evaluate", "tables"]
    assert all(ln.split()[2:4] == ["-m", "labo_fairseq"] and f"--root {work}" in ln for ln in printed if ln.startswith("+ "))
    train = [ln for ln in proc.stdout.splitlines() if ln.split()[0].endswith("fairseq-train")]
    assert len(train) == 2 and all("--max-update 50" in ln for ln in train)
    assert "--criterion label_smoothed_labo" in train[1] and train[1].endswith("--labo-warmup-updates 10")
    assert "--labo-warmup-updates" not in train[0]
    generate = [ln for ln in proc.stdout.splitlines() if ln.split()[0].endswith("fairseq-generate")]
    assert len(generate) == 6 and all("--beam 5" in ln for ln in generate)  # 3 test sets per method
    assert not work.exists()
    bad = script("quickstart", "--updates", "many")
    assert bad.returncode == 2 and "integers" in bad.stderr
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    refused = script("quickstart", "--work", foreign, "--force")
    assert refused.returncode == 2 and "not made by this script" in refused.stderr
    assert (foreign / "precious.txt").read_text() == "keep"
