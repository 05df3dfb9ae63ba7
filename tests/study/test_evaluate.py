"""The evaluate command's parts without fairseq: its decoding command, the recorded
hyper-parameters, and scoring a fairseq-generate output by each BLEU convention."""

from pathlib import Path

import pytest

from labo_fairseq.scoring import bleu as B
from labo_fairseq.study.evaluate import EvalError, decode_command, hyper_parameters, score_direction
from labo_fairseq.study.protocol import dataset_config, result_path


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


RAW = ["The cat sat on the mat.", "A dog barking at the moon.", "Well-known facts are known."]


@pytest.mark.parametrize("dataset,metric", [("iwslt14_de_en", B.tokenized_bleu),
                                            ("wmt14_en_de", B.compound_split_bleu),
                                            ("wmt14_de_en", B.tokenized_bleu)])
def test_scores_are_the_conventions_of_the_dataset(dataset, metric, tmp_path):
    ds = dataset_config(dataset)
    raw = tmp_path / "test.en"
    raw.write_text("\n".join(RAW) + "\n")
    score, hyps, stats = score_direction(ds, generate_output(HYPS, REFS), 3, "de", "en", raw)
    assert hyps == HYPS
    assert score["bleu"] == metric(HYPS, REFS)["bleu"] and score["convention"] == ds["bleu"]
    # sacreBLEU and chrF: detokenized output against the ORIGINAL references, lowercased where the text is
    lc = dataset.startswith("iwslt14")
    assert bool(ds.get("lowercase")) == lc
    detok = B.detokenize(HYPS, "en")
    assert score["sacrebleu"] == B.sacrebleu_13a(detok, RAW, lowercase=lc)["bleu"]
    assert score["chrf"] == B.chrf(detok, RAW, lowercase=lc)["chrf"]
    assert ("case:lc" in score["sacrebleu_signature"]) == lc and ("case:lc" in score["chrf_signature"]) == lc
    assert score["sacrebleu"] != B.sacrebleu_13a(detok, B.detokenize(REFS, "en"))["bleu"]  # not rebuilt references
    # the stored statistics give back the reported BLEU
    from labo_fairseq.scoring import stats as S
    assert len(stats) == 3 and abs(S.corpus_score(S.metric("bleu"), stats) - score["bleu"]) < 1e-3
    assert score["fairseq_bleu_line"].startswith("Generate test") and score["sentences"] == 3


def test_wmt14_de_en_is_not_compound_split():
    assert dataset_config("wmt14_en_de")["bleu"] == "compound_split"
    assert dataset_config("wmt14_de_en")["bleu"] == "tokenized"


def test_without_raw_references_no_sacrebleu_is_written(tmp_path):
    score, _, _ = score_direction(dataset_config("iwslt14_de_en"), generate_output(HYPS, REFS), 3, "de", "en",
                                  tmp_path / "missing.en")
    assert score["sacrebleu"] is None and score["chrf"] is None and "missing.en" in score["sacrebleu_note"]
    assert "sacrebleu_signature" not in score and score["bleu"] == B.tokenized_bleu(HYPS, REFS)["bleu"]


def test_raw_references_of_another_length_are_an_error(tmp_path):
    raw = tmp_path / "test.en"
    raw.write_text("one\ntwo\n")
    with pytest.raises(EvalError, match=r"test.en: 2 lines but the test set has 3 sentences"):
        score_direction(dataset_config("multi30k_de_en"), generate_output(HYPS, REFS), 3, "de", "en", raw)


def test_sacrebleu_convention_scores_against_the_raw_references(tmp_path):
    raw = tmp_path / "test0.de-en.en"
    raw.write_text("The cat sat on a mat.\nA dog barking at the moon.\nWell-known facts are known.\n")
    detok = ["The cat sat on the mat.", "A dog, barking at the moon.", "Well-known facts stay known."]
    ds = dataset_config("iwslt17_multi")
    score, _, _ = score_direction(ds, generate_output(detok, REFS), 3, "de", "en", raw)
    assert score["bleu"] == score["sacrebleu"] == B.sacrebleu_13a(detok, raw.read_text().splitlines())["bleu"]
    assert "case:mixed" in score["sacrebleu_signature"]
    with pytest.raises(EvalError, match="raw references not found"):
        score_direction(ds, generate_output(detok, REFS), 3, "de", "en", tmp_path / "nope")
    with pytest.raises(EvalError, match="2 lines but the test set has 3"):
        raw.write_text("one\ntwo\n")
        score_direction(ds, generate_output(detok, REFS), 3, "de", "en", raw)


def test_raw_reference_paths_follow_the_dataset(tmp_path):
    from labo_fairseq.study.protocol import raw_reference

    assert raw_reference(tmp_path, dataset_config("multi30k_de_en"), "test1", "de", "en") == \
        tmp_path / "multi30k.de-en" / "raw" / "test1.en"
    assert raw_reference(tmp_path, dataset_config("iwslt17_multi"), "test", "fr", "en") == \
        tmp_path / "iwslt17.de_fr-en" / "raw" / "test0.fr-en.en"


def test_an_incomplete_translation_is_an_error():
    with pytest.raises(EvalError, match="translated 2 of 3 test sentences"):
        score_direction(dataset_config("iwslt14_de_en"), generate_output(HYPS, REFS, missing={1}), 3, "de", "en", None)


def test_result_path_is_under_the_results_root():
    assert result_path(Path("/r"), "iwslt14_de_en", "labo", 2, 1.25) == Path("/r/iwslt14_de_en/labo-tau1.25/seed2.json")
    assert result_path(Path("/r"), "iwslt14_de_en", "ls", 1, None) == Path("/r/iwslt14_de_en/ls/seed1.json")


@pytest.mark.parametrize("iterator, epoch", [
    ({"epoch": 46, "iterations_in_epoch": 0}, 45),  # saved at the end of epoch 45 (fairseq stores the next)
    ({"epoch": 3, "iterations_in_epoch": 57}, 3),   # saved in the middle of epoch 3
    ({"epoch": 1, "iterations_in_epoch": 0}, 1),
    ({}, None),
])
def test_the_epoch_a_checkpoint_was_saved_in(iterator, epoch):
    from labo_fairseq.study.fairseq_tools import saved_in_epoch

    assert saved_in_epoch(iterator) == epoch
