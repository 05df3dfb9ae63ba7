"""The evaluate command's parts without fairseq: its decoding command, the recorded
hyper-parameters, and scoring a fairseq-generate output by each BLEU convention."""

from pathlib import Path

import pytest

from labo_fairseq import bleu as B
from labo_fairseq.evaluate import EvalError, decode_command, hyper_parameters, score_direction
from labo_fairseq.protocol import dataset_config, result_path


def generate_output(hyps, refs, missing=()):
    lines = []
    for i, (h, r) in enumerate(zip(hyps, refs)):
        if i in missing:
            continue
        lines += [f"S-{i}\tsource {i}", f"T-{i}\t{r}", f"H-{i}\t-0.5\t{h}", f"D-{i}\t-0.5\t{h}", f"P-{i}\t-0.1 -0.2"]
    return "\n".join(lines) + "\nGenerate test with beam=5: BLEU4 = 12.34, 50.0/20.0/10.0/5.0 (BP=1.000)\n"


HYPS = ["the cat sat on the mat .", "a dog , barking at the moon .", "well-known facts stay known ."]
REFS = ["the cat sat on a mat .", "a dog barking at the moon .", "well-known facts are known ."]


def test_decode_command_follows_the_dataset():
    iwslt = decode_command(dataset_config("iwslt14_de_en"), Path("/d"), Path("/c.pt"), "de", "en", True, 128)
    assert iwslt[iwslt.index("--remove-bpe") + 1] == "subword_nmt" and "--task" not in iwslt
    assert iwslt[iwslt.index("--beam") + 1] == "5" and iwslt[-1] == "--cpu"
    multi = decode_command(dataset_config("iwslt17_multi"), Path("/d"), Path("/c.pt"), "fr", "en", False, 64,
                           extra=["--max-len-b", "8"])
    assert multi[multi.index("--remove-bpe") + 1] == "sentencepiece"
    assert multi[multi.index("--task") + 1] == "multilingual_translation"
    assert multi[multi.index("--lang-pairs") + 1] == "de-en,fr-en" and multi[-3:] == ["--fp16", "--max-len-b", "8"]


def test_hyper_parameters_take_the_last_occurrence_and_bare_flags():
    argv = ["fairseq-train", "d", "--criterion", "label_smoothed_labo", "--labo-tau", "1.15", "--fp16",
            "--labo-tau", "1.25", "--seed", "3", "--unrelated", "x"]
    assert hyper_parameters(argv) == {"criterion": "label_smoothed_labo", "labo_tau": "1.25", "fp16": True,
                                      "seed": "3"}


@pytest.mark.parametrize("dataset,metric", [("iwslt14_de_en", B.tokenized_bleu),
                                            ("wmt14_en_de", B.compound_split_bleu)])
def test_scores_are_the_conventions_of_the_dataset(dataset, metric):
    ds = dataset_config(dataset)
    score, hyps = score_direction(ds, generate_output(HYPS, REFS), 3, "de", "en", None)
    assert hyps == HYPS
    assert score["bleu"] == metric(HYPS, REFS)["bleu"] and score["convention"] == ds["bleu"]
    assert score["sacrebleu"] == B.sacrebleu_13a(B.detokenize(HYPS, "en"), B.detokenize(REFS, "en"))["bleu"]
    assert score["fairseq_bleu_line"].startswith("Generate test") and score["sentences"] == 3


def test_sacrebleu_convention_scores_against_the_raw_references(tmp_path):
    raw = tmp_path / "test0.de-en.en"
    raw.write_text("The cat sat on a mat.\nA dog barking at the moon.\nWell-known facts are known.\n")
    detok = ["The cat sat on the mat.", "A dog, barking at the moon.", "Well-known facts stay known."]
    ds = dataset_config("iwslt17_multi")
    score, _ = score_direction(ds, generate_output(detok, REFS), 3, "de", "en", raw)
    assert score["bleu"] == score["sacrebleu"] == B.sacrebleu_13a(detok, raw.read_text().splitlines())["bleu"]
    with pytest.raises(EvalError, match="raw references not found"):
        score_direction(ds, generate_output(detok, REFS), 3, "de", "en", tmp_path / "nope")
    with pytest.raises(EvalError, match="2 lines but the test set has 3"):
        raw.write_text("one\ntwo\n")
        score_direction(ds, generate_output(detok, REFS), 3, "de", "en", raw)


def test_an_incomplete_translation_is_an_error():
    with pytest.raises(EvalError, match="translated 2 of 3 test sentences"):
        score_direction(dataset_config("iwslt14_de_en"), generate_output(HYPS, REFS, missing={1}), 3, "de", "en", None)


def test_result_path_is_under_the_results_root():
    assert result_path(Path("/r"), "iwslt14_de_en", "labo", 2, 1.25) == Path("/r/iwslt14_de_en/labo-tau1.25/seed2.json")
    assert result_path(Path("/r"), "iwslt14_de_en", "ls", 1, None) == Path("/r/iwslt14_de_en/ls/seed1.json")
