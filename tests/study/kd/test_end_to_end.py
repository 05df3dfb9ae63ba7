"""Distillation end to end on real Multi30k text, through the project's commands (CPU, tiny models):
an LS teacher -> word-KD student (interrupted and resumed) -> beam-5 evaluation; sequence-level KD
data (resumed shards) -> student; the student without KD; the distillation table with every cell.
Also 2-process gloo training of a word-KD student with --update-freq 2 (each rank loads the teacher).

Data: the first 400/50/30 pairs of the official Multi30k train/val/test_2016_flickr files, lowercased and
split into words and punctuation (no BPE), binarized with a joined dictionary.
"""

import gzip
import json
import os
import re
import socket
import subprocess
import sys

import pytest

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

from labo_fairseq.study.protocol import tiny_model
from tests.helpers import REPO, SHARED, fairseq, train_log

MULTI30K = SHARED / "multi30k" / "task1" / "raw"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("distillation"),  # one worker trains the teacher both tests use
    pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"real data not found at {MULTI30K} (set LABO_SHARED_DATA)"),
]

TEACHER = tiny_model(32, arch=False) + ["--max-update", "16"]
# smaller than the teacher, as configs/student.yaml is relative to the real teacher
STUDENT = tiny_model(16, arch=False)
COMMON = "--max-tokens 1000 --warmup-updates 5 --log-interval 1".split()
GEN = ["--max-len-b", "20"]


def tokenize(line):
    return " ".join(re.findall(r"\w+|[^\w\s]", line.lower()))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    text = root / "text"
    text.mkdir()
    for split, stem, n in (("train", "train", 400), ("valid", "val", 50), ("test", "test_2016_flickr", 30)):
        for lang in ("de", "en"):
            with gzip.open(MULTI30K / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()[:n]
            (text / f"{split}.{lang}").write_text("\n".join(map(tokenize, lines)) + "\n", encoding="utf-8")
    fairseq("preprocess", "--source-lang", "de", "--target-lang", "en", "--joined-dictionary", "--trainpref",
            text / "train", "--validpref", text / "valid", "--testpref", text / "test", "--destdir",
            root / "data-bin" / "multi30k.de-en", "--workers", "1")
    return root


def cli(ws, *args, check=True):
    """``labo-fairseq ARGS`` run from the workspace (relative paths are the user's)."""
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", *map(str, args)], cwd=ws, capture_output=True,
                          text=True, timeout=1200, env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore"))
    if check and proc.returncode != 0:
        raise AssertionError(f"labo-fairseq {' '.join(map(str, args[:4]))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def roots(ws):
    return ["--data-root", ws / "data-bin", "--runs-root", ws / "runs"]


def evaluate(ws, *args):
    return cli(ws, "evaluate", "multi30k_de_en", *args, *roots(ws), "--results-root", ws / "results", "--cpu", "--", *GEN)


@pytest.fixture(scope="module")
def teacher(workspace):
    cli(workspace, "train", "multi30k_de_en", "ls", "1", *roots(workspace), "--", *TEACHER, *COMMON)
    evaluate(workspace, "ls", "1")
    return workspace / "runs" / "multi30k_de_en" / "ls" / "seed1" / "checkpoints" / "checkpoint_best.pt"


def test_word_and_sequence_students_and_the_table(workspace, teacher):
    ws, runs = workspace, workspace / "runs" / "multi30k_de_en"
    # word-level KD, interrupted after 6 updates and resumed to 12
    kd = ["train", "multi30k_de_en", "kd", "1", "--teacher", "ls/seed1", *roots(ws), "--", *STUDENT, *COMMON]
    first = cli(ws, *kd, "--max-update", "6")
    log1 = train_log(first)
    assert sorted(log1) == list(range(1, 7))
    assert all(0 < r["gamma"] < 1.1 and r["teacher_nll"] > 0 and r["kd_loss"] >= 0 for r in log1.values())
    second = cli(ws, *kd, "--max-update", "12")
    assert "Loaded checkpoint" in second.stdout + second.stderr
    assert sorted(train_log(second)) == list(range(7, 13))
    evaluate(ws, "kd", "1", "--teacher", "ls/seed1")

    # sequence-level KD data: 2 shards; a lost shard is translated again, the finished one is kept
    dd = ["distill-data", "multi30k_de_en", "ls/seed1", *roots(ws), "--shards", "2", "--cpu", "--", *GEN]
    cli(ws, *dd)
    out = ws / "data-bin" / "multi30k.de-en.seqkd-ls-seed1"
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["sentences"] == 400 and manifest["beam"] == 5
    hyps = (out / ".distill" / "train.en").read_text()
    assert cli(ws, *dd, check=False).returncode == 2  # finished: kept unless --force
    (out / "distill.json").unlink()
    (out / ".distill" / "shard-0001-of-0002.txt").unlink()
    again = cli(ws, *dd)
    assert "shard 1/2 already translated" in again.stderr and "translating shard 2/2" in again.stderr
    assert (out / ".distill" / "train.en").read_text() == hyps
    for f in ("dict.de.txt", "dict.en.txt"):
        assert (out / f).read_text() == (ws / "data-bin" / "multi30k.de-en" / f).read_text()
    assert (out / "valid.de-en.en.bin").is_file() and (out / "test.de-en.de.idx").is_file()
    cli(ws, "train", "multi30k_de_en", "ce", "1", "--data-variant", "seqkd:ls/seed1", *roots(ws), "--",
        *STUDENT, *COMMON, "--max-update", "12")
    evaluate(ws, "ce", "1", "--data-variant", "seqkd:ls/seed1")

    # the same student without KD
    cli(ws, "train", "multi30k_de_en", "ce", "1", "--student", *roots(ws), "--", *STUDENT, *COMMON, "--max-update", "12")
    evaluate(ws, "ce", "1", "--student")

    # the teacher is not in the student's checkpoint: same size as the student trained without KD
    kd_ck = runs / "kd-ls-seed1" / "seed1" / "checkpoints" / "checkpoint_last.pt"
    plain_ck = runs / "ce-student" / "seed1" / "checkpoints" / "checkpoint_last.pt"
    diff = abs(kd_ck.stat().st_size - plain_ck.stat().st_size)
    assert diff < 0.1 * teacher.stat().st_size, (kd_ck.stat().st_size, plain_ck.stat().st_size, teacher.stat().st_size)

    table = cli(ws, "tables", "--view", "distillation", "--results", ws / "results").stdout
    line = next(ln for ln in table.splitlines() if ln.startswith("| LS teacher |"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]
    assert len(cells) == 5 and all(c.endswith("(n=1)") for c in cells), table
    result = json.loads((ws / "results" / "multi30k_de_en" / "kd-ls-seed1" / "seed1.json").read_text())
    assert result["distillation"]["teacher_gamma"]["split"] == "train"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_word_kd_with_update_freq(workspace, teacher, tmp_path):
    args = [sys.executable, "-m", "fairseq_cli.train", workspace / "data-bin" / "multi30k.de-en", "--user-dir",
            "labo_fairseq", "--task", "translation", "--arch", "transformer", *STUDENT, *COMMON, "--optimizer", "adam",
            "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--log-format", "json", "--cpu", "--num-workers", "0",
            "--criterion", "word_distillation", "--teacher-path", teacher, "--max-update", "3", "--update-freq", "2",
            "--save-dir", tmp_path / "ck", "--disable-validation", "--distributed-backend", "gloo", "--ddp-backend",
            "legacy_ddp", "--distributed-world-size", "2", "--distributed-init-method",
            f"tcp://127.0.0.1:{free_port()}", "--distributed-no-spawn"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([*map(str, args), "--distributed-rank", str(r)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    failed = [f"rank {r}: {e[-2500:]}" for r, (p, (_, e)) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n".join(failed)
    # fairseq logs INFO on rank 0 only; rank 1 got through training, so its criterion, whose constructor
    # loads the teacher from --teacher-path, was built there too
    assert "word_distillation: 1 teacher model(s)" in outs[0][0] + outs[0][1]
    assert "distributed init (rank 1)" in outs[1][0] + outs[1][1]
    log = train_log(subprocess.CompletedProcess([], 0, *outs[0]))
    assert sorted(log) == [1, 2, 3] and all(r["gamma"] > 0 for r in log.values())
