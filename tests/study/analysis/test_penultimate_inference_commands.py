"""``analyze penultimate`` and ``analyze inference-calibration`` end to end on the tiny checkpoint
trained on real IWSLT'14 text; a damaged checkpoint gives every analysis command one line naming it."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.helpers import REPO, png_size

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow


def analyze(what, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", "analyze", what, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_features_are_the_input_of_the_output_projection(data_bin, tiny_checkpoint):
    import torch

    from labo_fairseq.study.analysis.loading import batches, load
    from labo_fairseq.study.analysis.penultimate import output_embedding

    model, task = load(tiny_checkpoint, data_bin, cpu=True)
    sample = next(batches(model, task, "valid", 500, cpu=True))
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
        x = model(**sample["net_input"], features_only=True)[0]
    assert torch.allclose(x @ output_embedding(model).T, logits, atol=1e-5)


def row_name(res, row):
    return next(k for k, v in res["rows"].items() if v is row)


def test_penultimate_command(small_text, data_bin, tiny_checkpoint, tiny_checkpoint_early, tmp_path):
    out = tmp_path / "pen"
    proc = analyze("penultimate", data_bin, "--system", f"A={tiny_checkpoint_early}", "--system", f"B={tiny_checkpoint}",
                   "--subset", "valid", "--cpu", "--out", out)
    alone = analyze("penultimate", data_bin, "--system", f"B={tiny_checkpoint}", "--subset", "valid", "--cpu",
                    "--out", tmp_path / "pen_b")
    assert alone.returncode == 0
    res_b = json.loads((tmp_path / "pen_b" / "penultimate.json").read_text())
    res = json.loads((out / "penultimate.json").read_text())
    assert list(res["rows"]) == ["frequent", "similar"]
    gold = Counter(t for line in (small_text / "valid.en").read_text(encoding="utf-8").splitlines() for t in line.split())
    freq = res["rows"]["frequent"]["tokens"]
    assert len(set(freq)) == 3 and all(t.isalpha() and "@@" not in t for t in freq)
    assert [gold[t] for t in freq] == sorted((gold[t] for t in freq), reverse=True)
    for row in res["rows"].values():
        a, b = row["models"]["A"], row["models"]["B"]
        assert a != b  # two checkpoints (updates 20 and 40): their own numbers ...
        assert b == res_b["rows"][row_name(res, row)]["models"]["B"]  # ... B's as when it is analysed alone
        for space in ("full", "plane"):
            st = a[space]
            assert [st["classes"][t]["count"] for t in row["tokens"]] == [gold[t] for t in row["tokens"]]
            assert st["ratio"] == pytest.approx(st["mean_distance_between_means"] / st["mean_spread"])
            assert 0 < st["equidistance"] <= 1
            for c in st["classes"].values():
                assert c["spread"] > 0 and c["mean_distance_to_template"] > 0
        # the plane keeps the distances between the templates (they lie in it)
        assert a["plane"]["distance_between_templates"] == pytest.approx(a["full"]["distance_between_templates"])
        # a projection shrinks distances
        assert a["plane"]["mean_spread"] <= a["full"]["mean_spread"] + 1e-9
    assert png_size(out / "penultimate.png") == (680, 680)
    assert "ratio" in proc.stdout
    assert "INFO" not in proc.stderr  # fairseq's import does not take over the command's logging
    made = res["provenance"]  # the command that made it, the commit and the hardware, beside the numbers
    assert made["command"].startswith("labo-fairseq analyze penultimate ") and "--subset valid" in made["command"]
    assert "commit" in made and made["hardware"]["cpu_cores"] >= 1
    # hand-picked tokens; no overwrite without --force
    again = analyze("penultimate", data_bin, "--system", f"A={tiny_checkpoint}", "--out", out, "--cpu", check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    bad = analyze("penultimate", data_bin, "--system", f"A={tiny_checkpoint}", "--tokens", "zzqx", freq[0], freq[1],
                  "--no-similar", "--out", tmp_path / "p2", "--cpu", check=False)
    assert bad.returncode == 2 and "'zzqx' is not in the target dictionary" in bad.stderr


def test_inference_calibration_command(small_text, data_bin, tiny_checkpoint, tmp_path):
    out = tmp_path / "inf"
    proc = analyze("inference-calibration", data_bin, "--path", tiny_checkpoint, "--subset", "valid",
                   "--gen-subset", "test", "--t-step", "0.1", "--train-tgt", small_text / "train.en", "--cpu",
                   "--name", "TINY", "--out", out)
    res = json.loads((out / "inference_calibration.json").read_text())
    assert res["name"] == "TINY" and "--name TINY" in res["provenance"]["command"]
    test_lines = (small_text / "test.en").read_text(encoding="utf-8").splitlines()
    t_star = res["temperature_min_nll"]
    assert 0.5 <= t_star <= 3.0
    for key, temp in (("t1", 1.0), ("scaled", t_star)):
        tf, inf = res["teacher_forced"][key], res["inference"][key]
        assert tf["temperature"] == inf["temperature"] == temp
        assert tf["tokens"] == sum(len(line.split()) + 1 for line in test_lines)  # + EOS per sentence
        assert inf["sentences"] == len(test_lines) and inf["tokens"] > 0
        for r in (tf, inf):
            assert 0 <= r["ece"] <= 1 and 0 <= r["accuracy"] <= 1 and 0 < r["confidence"] <= 1
            assert sum(r["reliability"]["count"]) == r["tokens"] and len(r["reliability"]["count"]) == 15
        parts = inf["by_frequency"]
        assert [p["name"] for p in parts] == ["most frequent", "medium", "least frequent"]
        assert sum(p["tokens"] for p in parts) == inf["tokens"]
        assert parts[0]["mean_frequency"] >= parts[1]["mean_frequency"] >= parts[2]["mean_frequency"]
        assert inf["ter"] == pytest.approx(inf["ter_edits"] / inf["ref_tokens"])
        # every correct token matches a reference token: accuracy x tokens <= reference tokens
        assert inf["accuracy"] * inf["tokens"] <= inf["ref_tokens"] + 1e-6
    for name in ("reliability_teacher_forced", "reliability_teacher_forced_scaled", "reliability_inference",
                 "reliability_inference_scaled", "inference_calibration"):
        assert png_size(out / f"{name}.png") == (640, 480)
    assert "inference ECE" in proc.stdout
    again = analyze("inference-calibration", data_bin, "--path", tiny_checkpoint, "--out", out, "--cpu", check=False)
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("what,args,missing", [
    ("penultimate", ["/no/such/bin", "--system", "A={ck}", "--out", "{tmp}/o"], "/no/such/bin: no such directory"),
    ("penultimate", ["{bin}", "--system", "A=/no/ck.pt", "--out", "{tmp}/o"], "/no/ck.pt: no such file"),
    ("inference-calibration", ["{bin}", "--path", "/no/ck.pt", "--out", "{tmp}/o"], "/no/ck.pt: no such file"),
    ("inference-calibration", ["{bin}", "--path", "{ck}", "--train-tgt", "/no/train.en", "--out", "{tmp}/o"],
     "/no/train.en: no such file"),
])
def test_missing_inputs_are_named(what, args, missing, data_bin, tiny_checkpoint, tmp_path):
    fill = {"ck": tiny_checkpoint, "bin": data_bin, "tmp": tmp_path}
    proc = analyze(what, *[a.format(**fill) for a in args], check=False)
    assert proc.returncode == 2 and missing in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def damaged(tiny_checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    data = tiny_checkpoint.read_bytes()
    (d / "truncated.pt").write_bytes(data[:len(data) // 2])  # as a copy interrupted half-way
    (d / "garbage.pt").write_bytes(b"not a checkpoint\n" * 100)
    return d


@pytest.mark.parametrize("what,args", [
    ("calibrate", ["{bin}", "--path", "{ck}", "--out", "{tmp}/o", "--cpu"]),
    ("penultimate", ["{bin}", "--system", "A={ck}", "--out", "{tmp}/o", "--cpu"]),
    ("inference-calibration", ["{bin}", "--path", "{ck}", "--out", "{tmp}/o", "--cpu"]),
    ("beam-probs", ["{bin}", "--system", "A={ck}", "--out", "{tmp}/o", "--cpu"]),
])
@pytest.mark.parametrize("which", ["truncated.pt", "garbage.pt"])
def test_damaged_checkpoint_gives_one_line_naming_it(what, args, which, damaged, data_bin, tmp_path):
    ck = damaged / which
    proc = analyze(what, *[a.format(ck=ck, bin=data_bin, tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    naming = [line for line in proc.stderr.splitlines() if str(ck) in line]
    assert len(naming) == 1 and "not a readable fairseq checkpoint" in naming[0]
    assert proc.stderr.strip().splitlines()[-1] == naming[0]
    assert not (tmp_path / "o").exists()
