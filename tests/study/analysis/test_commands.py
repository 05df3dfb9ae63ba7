"""The analysis commands end to end on real IWSLT'14 text and a tiny checkpoint trained in the test."""

import json
import subprocess
import sys

import pytest
import sacrebleu

from tests.helpers import REPO, png_size

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
pytest.importorskip("matplotlib")

from labo_fairseq.scoring.frequency import frequency_scores, make_splits


def run(module, *args):
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", "analyze", module.replace("_", "-"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def degrade(line):
    """A deterministic imperfect 'system': drop every third word."""
    return " ".join(w for i, w in enumerate(line.split()) if i % 3 != 2)


def test_frequency_splits_on_real_text(small_text, tmp_path):
    src = (small_text / "valid.de").read_text(encoding="utf-8").splitlines()
    refs = (small_text / "valid.en").read_text(encoding="utf-8").splitlines()
    (tmp_path / "a.hyp").write_text("\n".join(degrade(r) for r in refs) + "\n", encoding="utf-8")
    (tmp_path / "b.hyp").write_text("\n".join(refs) + "\n", encoding="utf-8")
    run("freq_splits", "--train-src", small_text / "train.de", "--src", small_text / "valid.de",
        "--ref", small_text / "valid.en", "--system", f"A={tmp_path / 'a.hyp'}", "--system", f"B={tmp_path / 'b.hyp'}",
        "--tokenize", "none", "--out", tmp_path / "freq")
    res = json.loads((tmp_path / "freq" / "freq_splits.json").read_text())
    sizes = [s["size"] for s in res["splits"]]
    assert sizes == [34, 33, 33] and [s["name"] for s in res["splits"]] == ["most frequent", "medium", "least frequent"]
    assert res["provenance"]["command"].startswith("labo-fairseq analyze freq-splits --train-src ")
    means = [s["mean_frequency"] for s in res["splits"]]
    assert means[0] > means[1] > means[2]
    assert sorted(i for s in res["splits"] for i in s["ids"]) == list(range(100))
    for split, bleu_a in zip(res["splits"], res["bleu"]["A"]):
        ids = split["ids"]
        direct = sacrebleu.corpus_bleu([degrade(refs[i]) for i in ids], [[refs[i] for i in ids]], tokenize="none")
        assert bleu_a == pytest.approx(direct.score)
    assert res["bleu"]["B"] == pytest.approx([100.0] * 3)
    assert res["delta"]["B"] == pytest.approx([100.0 - a for a in res["bleu"]["A"]])
    # independent recomputation of the scores and split order
    scores = frequency_scores(src, (small_text / "train.de").read_text(encoding="utf-8").splitlines())
    assert [s["ids"] for s in res["splits"]] == make_splits(scores, 3)


def test_make_splits_with_split_size():
    splits = make_splits([5.0, 1.0, 3.0, 4.0, 2.0, 0.5, 9.0], parts=3, split_size=3)
    assert splits == [[6, 0, 3], [2, 4, 1], [5]]


def test_calibrate_command(data_bin, tiny_checkpoint, tmp_path):
    out = tmp_path / "cal"
    run("calibrate", data_bin, "--path", tiny_checkpoint, "--subset", "valid", "--out", out, "--cpu",
        "--t-step", "0.1", "--bleu-temperatures", "1.0", "1.5", "--gen-subset", "test")
    res = json.loads((out / "calibration.json").read_text())
    assert 0 <= res["ece"] <= 1 and res["nll"] > 0 and res["tokens"] > 1000
    assert res["temperature_min_nll"]["nll"] <= res["nll"]
    assert res["temperature_min_ece"]["ece"] <= res["ece"]
    assert sum(res["reliability"]["count"]) == res["tokens"] and len(res["reliability"]["count"]) == 15
    assert [b["temperature"] for b in res["bleu_vs_temperature"]] == [1.0, 1.5]
    assert all(b["sentences"] == 50 for b in res["bleu_vs_temperature"])
    for name in ("reliability", "reliability_scaled", "temperature", "bleu_temperature"):
        assert png_size(out / f"{name}.png") == (640, 480)
    # a second run refuses to overwrite without --force
    again = subprocess.run([sys.executable, "-m", "labo_fairseq", "analyze", "calibrate", str(data_bin), "--path",
                            str(tiny_checkpoint), "--out", str(out), "--cpu"], cwd=REPO, capture_output=True, text=True)
    assert again.returncode != 0 and "--force" in again.stderr


def test_beam_probs_command_with_frequency_splits(small_text, data_bin, tiny_checkpoint, tiny_checkpoint_early,
                                                  tmp_path):
    refs = (small_text / "test.en").read_text(encoding="utf-8").splitlines()
    (tmp_path / "ref.hyp").write_text("\n".join(refs) + "\n", encoding="utf-8")
    run("freq_splits", "--train-src", small_text / "train.de", "--src", small_text / "test.de",
        "--ref", small_text / "test.en", "--system", f"REF={tmp_path / 'ref.hyp'}", "--out", tmp_path / "freq")
    out = tmp_path / "beam"
    splits = ["--splits", tmp_path / "freq" / "freq_splits.json", "--cpu"]
    proc = run("beam_probs", data_bin, "--system", f"EARLY={tiny_checkpoint_early}", "--system", f"LABO={tiny_checkpoint}",
               *splits, "--out", out)
    run("beam_probs", data_bin, "--system", f"LABO={tiny_checkpoint}", *splits, "--out", tmp_path / "alone")
    res = json.loads((out / "beam_probs.json").read_text())
    alone = json.loads((tmp_path / "alone" / "beam_probs.json").read_text())
    assert list(res["stats"]) == ["most frequent", "medium", "least frequent"]
    for split, per in res["stats"].items():
        a, b = per["LABO"], per["EARLY"]
        assert a["steps"] > 0 and 0 < a["mean"] < 1 and sum(a["histogram"]) == a["steps"]
        assert a != b  # two checkpoints (updates 40 and 20), each its own decode ...
        assert a == alone["stats"][split]["LABO"]  # ... and LABO's numbers as when it is decoded alone
    assert sum(per["LABO"]["steps"] for per in res["stats"].values()) > 50  # every sentence has >= 1 step
    assert png_size(out / "beam_probs.png") == (960, 480)
    assert "mode bin" in proc.stdout


@pytest.mark.parametrize("module,args,missing", [
    ("calibrate", ["/no/such/bin", "--path", "{ck}", "--out", "{tmp}/o"], "/no/such/bin: no such directory"),
    ("calibrate", ["{bin}", "--path", "/no/ck.pt", "--out", "{tmp}/o"], "/no/ck.pt: no such file"),
    ("beam_probs", ["/no/such/bin", "--system", "A={ck}", "--out", "{tmp}/o"], "/no/such/bin: no such directory"),
    ("freq_splits", ["--train-src", "/no/train.de", "--src", "{tmp}/x", "--system", "A={tmp}/x", "--out", "{tmp}/o"],
     "/no/train.de: no such file"),
])
def test_missing_inputs_are_named(module, args, missing, data_bin, tmp_path):
    (tmp_path / "x").write_text("a\n")
    fill = {"ck": tmp_path / "x", "bin": data_bin, "tmp": tmp_path}
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", "analyze", module.replace("_", "-"),
                           *[a.format(**fill) for a in args]], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and missing in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_analysis_demo_script_dry_run_and_missing_runs(tmp_path):
    def demo(*args):
        return subprocess.run(["bash", str(REPO / "scripts" / "analysis_demo.sh"), *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    work, out = tmp_path / "qs", tmp_path / "figs"
    proc = demo("--work", work, "--out", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    steps = [ln.split()[4:6] for ln in proc.stdout.splitlines()]
    assert steps == [["train", "multi30k_de_en"], ["analyze", "freq-splits"], ["analyze", "beam-probs"],
                     *[["analyze", "calibrate"]] * 2, ["analyze", "penultimate"], *[["analyze", "inference-calibration"]] * 3]
    assert f"--out {out}/inference_calibration/labo" in proc.stdout and f"--root {work}" in proc.stdout
    assert not work.exists() and not out.exists()
    missing = demo("--work", work, "--out", out)
    assert missing.returncode == 1 and "checkpoint_best.pt is missing: run scripts/quickstart.sh" in missing.stderr
    assert demo("--bogus").returncode == 2
