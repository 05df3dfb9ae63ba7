"""The BLEU conventions: tokenized BLEU equals fairseq-score (multi-bleu), compound splitting equals
fairseq's perl one-liner, on real text."""

import lzma
import random
import shutil
import subprocess
import sys

import pytest

from labo_fairseq.scoring import bleu as B
from tests.helpers import IWSLT, REPO, SHARED


def test_compound_split_is_non_overlapping_left_to_right():
    assert B.compound_split("a-b") == "a ##AT##-##AT## b"
    assert B.compound_split("a-b-c") == "a ##AT##-##AT## b-c"  # perl's s///g resumes after "b"
    assert B.compound_split("x @-@ y") == "x @ ##AT##-##AT## @ y"  # Moses -a output, as fairseq's script sees it
    assert B.compound_split("- a -b c- ") == "- a -b c- "


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl not installed")
def test_compound_split_equals_fairseqs_perl_on_newstest2014():
    if not (SHARED / "wmt14.en-de").is_dir():
        pytest.skip(f"real data not found at {SHARED}")
    from labo_fairseq.study.prepare.sources import Sources
    from labo_fairseq.study.prepare.text import MosesTokenizer
    from labo_fairseq.study.prepare.wmt14 import newstest2014

    tok = MosesTokenizer("de", aggressive_dash_splits=True)
    lines = [tok(s) for s in newstest2014(Sources([SHARED / "wmt14.en-de"], offline=True), "de")]
    assert sum("@-@" in ln for ln in lines) > 100  # the case that matters is there
    perl = subprocess.run(["perl", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert [B.compound_split(ln) for ln in lines] == perl


def _iwslt_test(lang, n):
    with lzma.open(IWSLT / "tmp" / f"test.{lang}.xz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()[:n]


@pytest.mark.slow
def test_tokenized_bleu_equals_fairseq_score(tmp_path):
    """A "system" made from real references with words dropped and swapped, scored both ways."""
    pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
    if not IWSLT.is_dir():
        pytest.skip(f"real data not found at {IWSLT}")
    refs = _iwslt_test("en", 400)
    rng = random.Random(0)
    hyps = []
    for ref in refs:
        words = [w for w in ref.split() if rng.random() > 0.2]
        if len(words) > 3 and rng.random() < 0.5:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        hyps.append(" ".join(words))
    (tmp_path / "sys").write_text("\n".join(hyps) + "\n")
    (tmp_path / "ref").write_text("\n".join(refs) + "\n")
    proc = subprocess.run([sys.executable, "-m", "fairseq_cli.score", "--sys", tmp_path / "sys", "--ref", tmp_path / "ref"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    fairseq_bleu = float(proc.stdout.split("BLEU4 = ")[1].split(",")[0])
    ours = B.tokenized_bleu(hyps, refs)
    assert 20 < ours["bleu"] < 90
    assert ours["bleu"] == pytest.approx(fairseq_bleu, abs=0.005)
    assert "tok:none" in ours["signature"]


def test_detokenize_undoes_moses_escapes_and_dash_joins():
    assert B.detokenize(["it &apos;s a &quot; well @-@ known &quot; fact ."], "en") == ['it\'s a "well-known" fact.']


def test_sacrebleu_13a_has_its_signature_and_rejects_length_mismatch():
    r = B.sacrebleu_13a(["the cat sat on the mat ."], ["the cat sat on the mat ."])
    assert r["bleu"] == 100.0 and "tok:13a" in r["signature"]
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        B.tokenized_bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="unknown BLEU convention"):
        B.paper_bleu("chrf", ["a"], ["a"])
