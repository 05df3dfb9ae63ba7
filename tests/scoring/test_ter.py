"""TER alignment labels on hand-made pairs, and edit counts against sacrebleu's TER on real text."""

import lzma
import random

import pytest
from sacrebleu.metrics import TER

from labo_fairseq.scoring import ter
from tests.helpers import IWSLT


@pytest.mark.parametrize("hyp,ref,correct,edits", [
    ("the cat sat on the mat", "the cat sat on the mat", [1, 1, 1, 1, 1, 1], 0),
    # insertion: an extra hypothesis word is wrong, the others match
    ("the big cat sat on the mat", "the cat sat on the mat", [1, 0, 1, 1, 1, 1, 1], 1),
    # deletion: a reference word is missing; every hypothesis word still matches
    ("the cat on the mat", "the cat sat on the mat", [1, 1, 1, 1, 1], 1),
    # substitution
    ("the dog sat on the mat", "the cat sat on the mat", [1, 0, 1, 1, 1, 1], 1),
    # a shifted phrase: one shift, and the moved words are correct where they land
    ("on the mat the cat sat", "the cat sat on the mat", [1, 1, 1, 1, 1, 1], 1),
    # shift plus substitution: the moved phrase is correct, the substituted word is not
    ("on the rug the cat sat", "the cat sat on the mat", [1, 1, 0, 1, 1, 1], 2),
    ("", "the cat", [], 2),
    ("a b", "", [0, 0], 2),
])
def test_labels_on_hand_made_pairs(hyp, ref, correct, edits):
    al = ter.align(hyp.split(), ref.split())
    assert al.correct == [bool(c) for c in correct]
    assert al.edits == edits
    if ref:
        assert al.score * 100 == pytest.approx(TER(case_sensitive=True).sentence_score(hyp, [ref]).score)


def test_shift_counts_once_and_is_not_used_when_it_does_not_help():
    al = ter.align("on the mat the cat sat".split(), "the cat sat on the mat".split())
    assert al.shifts == 1
    al = ter.align("a b c d".split(), "w x y z".split())
    assert al.shifts == 0 and al.edits == 4 and not any(al.correct)


def test_edit_distance_trace():
    dist, trace = ter.edit_distance("a x c d".split(), "a b c".split())
    assert dist == 2 and trace == ter.MATCH + ter.SUB + ter.MATCH + ter.HYP_ONLY


def _real_pairs(n):
    if not IWSLT.is_dir():
        pytest.skip(f"real data not found at {IWSLT} (set LABO_SHARED_DATA)")
    with lzma.open(IWSLT / "test.en.xz", "rt", encoding="utf-8") as f:
        refs = [line for line in f.read().splitlines() if line.strip()][:n]
    rng = random.Random(0)
    hyps = []
    for r in refs:  # shuffled phrases, substitutions and insertions: every kind of edit, shifts included
        w = r.split()
        if len(w) > 4:
            i = rng.randrange(len(w) - 3)
            phrase = w[i:i + 2]
            del w[i:i + 2]
            j = rng.randrange(len(w) + 1)
            w[j:j] = phrase
        if w and rng.random() < 0.5:
            w[rng.randrange(len(w))] = "xyz"
        if rng.random() < 0.5:
            w.insert(rng.randrange(len(w) + 1), "the")
        hyps.append(" ".join(w))
    return hyps, refs


def test_edit_counts_agree_with_sacrebleu_on_real_text():
    hyps, refs = _real_pairs(100)
    metric = TER(case_sensitive=True)
    edits = words = 0
    for h, r in zip(hyps, refs):
        al = ter.align(h.split(), r.split())
        # sentence TER (sacrebleu, in %) times reference length = number of edits
        assert al.edits == round(metric.sentence_score(h, [r]).score * len(r.split()) / 100), (h, r)
        # a correct word is aligned to an identical reference word: never more than the reference has
        assert sum(al.correct) <= len(r.split())
        edits, words = edits + al.edits, words + al.ref_length
    assert 100 * edits / words == pytest.approx(metric.corpus_score(hyps, [refs]).score)
    assert any(ter.align(h.split(), r.split()).shifts for h, r in zip(hyps, refs))
