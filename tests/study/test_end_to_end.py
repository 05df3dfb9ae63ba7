"""End to end through fairseq's own command-line tools on real IWSLT'14 text (CPU, tiny transformer).

Data: fairseq's tokenized+BPE IWSLT'14 de-en valid/test files from the test-data directory (it holds
no training text): 2,000 lines stand in for training data, then 100 for validation, 50 for test.
"""

import os
import re
import socket
import subprocess
import sys

import pytest

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

from tests.helpers import IWSLT, REPO, TINY, fairseq, train_log

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IWSLT.is_dir(), reason=f"real data not found at {IWSLT} (set LABO_SHARED_DATA)"),
]


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

    # fairseq-interactive loads the same checkpoint and translates from standard input.
    inter = subprocess.run([sys.executable, "-m", "fairseq_cli.interactive", str(data_bin), "--user-dir", "labo_fairseq",
                            "--path", str(ck / "checkpoint_best.pt"), "--beam", "5", "--remove-bpe", "--cpu",
                            "--source-lang", "de", "--target-lang", "en", "--max-len-b", "20"],
                           cwd=REPO, input="das ist ein test .\nwir sind hier .\n", capture_output=True, text=True,
                           timeout=600)
    assert inter.returncode == 0, inter.stderr[-3000:]
    assert len(re.findall(r"^H-\d+\t", inter.stdout, flags=re.M)) == 2

    # Without the plugin, the same checkpoint is refused by torch >= 2.6's weights_only loader (as
    # documented), and official fairseq 0.12.2 cannot decode it (docs/fairseq-compat.md).
    import torch
    from fairseq.modules.transformer_layer import TransformerEncoderLayerBase

    from labo_fairseq import register

    register()
    weights_only_default = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)
    fast_path_defect = getattr(TransformerEncoderLayerBase.forward, "_labo_mask_type", False)
    if weights_only_default or fast_path_defect:
        refused = fairseq("generate", data_bin, "--path", ck / "checkpoint_best.pt", "--cpu", check=False)
        assert refused.returncode != 0
        assert ("weights_only" if weights_only_default else "Mask Type should be defined") in refused.stderr


def test_invalid_flag_stops_training_at_startup(data_bin, tmp_path):
    proc = fairseq("train", data_bin, "--user-dir", "labo_fairseq", "--task", "translation", *TINY,
                   "--criterion", "label_smoothed_labo", "--labo-tau", "0", "--max-update", "5",
                   "--save-dir", tmp_path / "ck", check=False)
    assert proc.returncode != 0
    assert "--labo-tau must be in (0, inf), got 0.0" in proc.stderr
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
