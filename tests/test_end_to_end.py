"""End to end through fairseq's own command-line tools on real IWSLT'14 text (CPU, tiny transformer).

Data: fairseq's tokenized+BPE IWSLT'14 de-en valid/test files from ../shared/data (the training text
is not available here): 2,000 lines stand in for training data, then 100 for validation, 50 for test.
"""

import json
import lzma
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LABO_SHARED_DATA", REPO.parent / "shared" / "data"))
IWSLT = SHARED / "iwslt14.de-en" / "fairseq-tokenized"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IWSLT.is_dir(), reason=f"real data not found at {IWSLT} (set LABO_SHARED_DATA)"),
]

TINY = ("--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 "
        "--decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 "
        "--encoder-attention-heads 2 --decoder-attention-heads 2 --share-all-embeddings "
        "--optimizer adam --lr 2e-3 --max-tokens 1000 --log-format json --log-interval 1 "
        "--cpu --seed 1 --no-epoch-checkpoints --num-workers 0").split()


def fairseq(tool, *args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq {tool} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _is_number(v):
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def train_log(proc):
    """The per-update ``train_inner`` records of a --log-format json run, by num_updates."""
    out = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"\| train_inner \| (\{.*\})", line)
        if m:
            rec = json.loads(m.group(1))
            out[int(rec["num_updates"])] = {k: float(v) for k, v in rec.items() if _is_number(v)}
    return out


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("iwslt14_small")
    spans = {"train": (0, 2000, "valid"), "valid": (0, 100, "test"), "test": (100, 150, "test")}
    for split, (lo, hi, source) in spans.items():
        for lang in ("de", "en"):
            with lzma.open(IWSLT / f"{source}.{lang}.xz", "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()[lo:hi]
            (root / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dest = root / "bin"
    fairseq("preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", root / "train",
            "--validpref", root / "valid", "--testpref", root / "test", "--destdir", dest,
            "--joined-dictionary", "--workers", "2")
    return dest


@pytest.mark.parametrize(
    "criterion",
    [
        ["--criterion", "label_smoothed_labo", "--labo-warmup-updates", "0"],
        ["--criterion", "confidence_penalty", "--cp-beta", "0.1"],
        ["--criterion", "focal_loss", "--focal-gamma", "2"],
        ["--criterion", "anti_focal_loss"],
    ],
    ids=lambda c: c[1],
)
def test_each_criterion_trains(data_bin, tmp_path, criterion):
    proc = fairseq("train", data_bin, "--user-dir", "labo_fairseq", "--task", "translation", *TINY,
                   *criterion, "--max-update", "30", "--save-dir", tmp_path / "ck", "--disable-validation")
    log = train_log(proc)
    assert sorted(log) == list(range(1, 31))
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e6 for r in log.values())  # finite
    first = sum(log[u]["nll_loss"] for u in (1, 2, 3)) / 3
    last = sum(log[u]["nll_loss"] for u in (28, 29, 30)) / 3
    assert last < first - 1.0, (first, last)


def test_labo_warmup_resume_and_generate(data_bin, tmp_path):
    """LABO's warm-up ends inside the run, with --update-freq 2 and --eval-bleu validation between
    updates; an interrupted run resumes without restarting the warm-up; beam-5 decoding of the
    BLEU-selected checkpoint translates every test sentence."""
    ck = tmp_path / "ck"
    common = [data_bin, "--user-dir", "labo_fairseq", "--task", "translation", *TINY,
              "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "8", "--update-freq", "2",
              "--save-dir", ck, "--validate-interval-updates", "4", "--save-interval-updates", "4",
              "--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_b": 20}', "--eval-bleu-remove-bpe",
              "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
    first = train_log(fairseq("train", *common, "--max-update", "6"))
    assert sorted(first) == list(range(1, 7))
    assert all(first[u]["labo_active"] == 0 and first[u]["labo_alpha"] == pytest.approx(0.1) for u in first)

    resumed = fairseq("train", *common, "--max-update", "12")
    assert "Loaded checkpoint" in resumed.stderr + resumed.stdout
    second = train_log(resumed)
    assert sorted(second) == list(range(7, 13))
    # update_num u = num_updates - 1: uniform LS while u < 8, LABO from u = 8 (logged as 9) on.
    assert [second[u]["labo_active"] for u in range(7, 13)] == [0, 0, 1, 1, 1, 1]
    assert all(0.5 <= second[u]["labo_alpha"] <= 1.0 for u in range(9, 13))

    gen = fairseq("generate", data_bin, "--user-dir", "labo_fairseq", "--path", ck / "checkpoint_best.pt",
                  "--beam", "5", "--remove-bpe", "--cpu", "--max-tokens", "2000", "--max-len-b", "20")
    out = gen.stdout + gen.stderr
    assert "Translated 50 sentences" in out
    assert len(re.findall(r"^H-\d+\t", gen.stdout, flags=re.M)) == 50
    assert re.search(r"Generate test with beam=5: BLEU4 = \d+\.\d+", out)

    # The same checkpoint without the plugin is refused by torch's weights_only loader, as documented.
    refused = fairseq("generate", data_bin, "--path", ck / "checkpoint_best.pt", "--cpu", check=False)
    assert refused.returncode != 0 and "weights_only" in refused.stderr


def test_invalid_flag_stops_training_at_startup(data_bin, tmp_path):
    proc = fairseq("train", data_bin, "--user-dir", "labo_fairseq", "--task", "translation", *TINY,
                   "--criterion", "label_smoothed_labo", "--labo-tau", "0", "--max-update", "5",
                   "--save-dir", tmp_path / "ck", check=False)
    assert proc.returncode != 0
    assert "--labo-tau must be in (0.0, inf), got 0.0" in proc.stderr
    assert not (tmp_path / "ck" / "checkpoint_last.pt").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(data_bin, ck, max_update):
    port = free_port()
    args = [sys.executable, "-m", "fairseq_cli.train", data_bin, "--user-dir", "labo_fairseq",
            "--task", "translation", *TINY, "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "4",
            "--max-update", max_update, "--save-dir", ck, "--disable-validation",
            "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp", "--distributed-world-size", "2",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([*map(str, args), "--distributed-rank", str(r)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    failed = [f"rank {r} exited {p.returncode}:\n{e[-2500:]}" for r, (p, (_, e)) in enumerate(zip(procs, outs))
              if p.returncode != 0]
    assert not failed, "\n".join(failed)
    assert all(f"distributed init (rank {r})" in o + e for r, (o, e) in enumerate(outs))
    return outs[0][0] + outs[0][1], train_log(subprocess.CompletedProcess([], 0, *outs[0]))


def test_two_process_gloo_training_and_resume_with_labo(data_bin, tmp_path):
    """fairseq's own distributed training on CPU: 2 ranks, gloo, legacy_ddp, one process per rank;
    the resumed run (rank 0 loads and broadcasts the checkpoint state) keeps the warm-up count."""
    ck = tmp_path / "ck"
    _, log = run_ranks(data_bin, ck, 3)
    assert sorted(log) == [1, 2, 3] and all(r["labo_active"] == 0 for r in log.values())
    # Both ranks' tokens are in the logged batch: words per batch > one rank's --max-tokens 1000.
    assert max(r["wpb"] for r in log.values()) > 1000
    out, log = run_ranks(data_bin, ck, 8)
    assert "Loaded checkpoint" in out
    assert sorted(log) == list(range(4, 9))
    assert [log[u]["labo_active"] for u in range(4, 9)] == [0, 1, 1, 1, 1]
