"""The BLEU that chooses the checkpoint is the BLEU we report: a tiny run with the configs' validation
BLEU flags, then the valid set decoded by fairseq-generate and scored by ``labo_fairseq.scoring.bleu``."""

import json
import re

import pytest

from labo_fairseq.scoring import bleu as B
from labo_fairseq.study.fairseq_tools import parse_generate
from labo_fairseq.study.protocol import dataset_config, flags
from tests.helpers import IWSLT, TINY, fairseq

EVAL_FLAGS = ("--eval-bleu", "--eval-bleu-args", "--eval-bleu-detok", "--eval-bleu-remove-bpe", "--eval-tokenized-bleu")


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """IWSLT'14 text (tokenized, BPE): 150 short lines, both the training and the valid set, so that a
    tiny model reaches a BLEU far from 0 in a few hundred updates."""
    pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
    import lzma

    if not IWSLT.is_dir():
        pytest.skip(f"real data not found at {IWSLT} (set LABO_SHARED_DATA)")
    root = tmp_path_factory.mktemp("memorized")
    for lang in ("de", "en"):
        with lzma.open(IWSLT / f"valid.{lang}.xz", "rt", encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if len(ln.split()) <= 12][:150]
        for split, part in (("train", lines), ("valid", lines)):
            (root / f"{split}.{lang}").write_text("\n".join(part) + "\n", encoding="utf-8")
    fairseq("preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", root / "train",
            "--validpref", root / "valid", "--destdir", root / "bin", "--joined-dictionary", "--workers", "2")
    return root / "bin"


def eval_flag_sets():
    """Each distinct set of validation-BLEU flags among the dataset configs (with one dataset that has it)."""
    from labo_fairseq.study.protocol import common_config, names

    seen = {}
    for d in names("datasets"):
        args = {**common_config()["args"], **dataset_config(d)["args"]}
        if args.get("--eval-bleu"):
            seen.setdefault(tuple(flags({k: v for k, v in args.items() if k in EVAL_FLAGS})), d)
    return [pytest.param(list(f), id=d) for f, d in seen.items()]


def test_every_config_with_validation_bleu_scores_tokens():
    for p in eval_flag_sets():
        assert "--eval-tokenized-bleu" in p.values[0], p.id


@pytest.mark.slow
@pytest.mark.parametrize("eval_flags", eval_flag_sets())
def test_validation_bleu_is_the_tokenized_test_bleu(memorized, tmp_path, eval_flags):
    i = eval_flags.index("--eval-bleu-args")
    decode = json.loads(eval_flags[i + 1])
    assert "--eval-tokenized-bleu" in eval_flags  # the point of this test: without it fairseq re-tokenizes (13a)
    ck = tmp_path / "ck"
    train = fairseq("train", memorized, "--user-dir", "labo_fairseq", "--task", "translation", *TINY,
                    "--lr", "5e-3", "--max-update", "300", "--validate-interval", "1000", "--save-dir", ck,
                    "--criterion", "cross_entropy", *eval_flags, "--best-checkpoint-metric", "bleu",
                    "--maximize-best-checkpoint-metric")
    logged = [json.loads(m.group(1)) for m in re.finditer(r"\| valid \| (\{.*\})", train.stdout + train.stderr)]
    valid_bleu = float(logged[-1]["valid_bleu"])
    assert valid_bleu > 2, "the tiny model should have learnt something"
    gen = fairseq("generate", memorized, "--user-dir", "labo_fairseq", "--path", ck / "checkpoint_last.pt",
                  "--gen-subset", "valid", "--beam", decode["beam"], "--max-len-a", decode["max_len_a"],
                  "--max-len-b", decode["max_len_b"], "--remove-bpe", "--batch-size", "128", "--cpu")
    g = parse_generate(gen.stdout + gen.stderr)
    ours = B.tokenized_bleu(g.ordered(g.hypothesis), g.ordered(g.reference))["bleu"]
    # fairseq logs the validation BLEU to 2 decimals; its <unk> spellings (UNKNOWNTOKENINHYP/INREF in
    # validation, <unk>/<<unk>> in generate) never match either way; same beam and length limits.
    assert ours == pytest.approx(valid_bleu, abs=0.011)
    # the 13a re-tokenization fairseq does without --eval-tokenized-bleu is another number
    retok = B.sacrebleu_13a(g.ordered(g.hypothesis), g.ordered(g.reference))["bleu"]
    assert abs(retok - ours) > 0.05
