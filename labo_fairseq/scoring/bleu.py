"""The paper's BLEU conventions, as pure functions of hypothesis and reference strings.

- ``tokenized``: BLEU-4 on the prepared (Moses-tokenized, lowercased for IWSLT'14) text after BPE
  removal, i.e. ``fairseq-generate --remove-bpe``'s BLEU / ``fairseq-score`` / multi-bleu.perl.
- ``compound_split``: the same after fairseq's ``compound_split_bleu.sh`` rewrites every
  ``X-Y`` as ``X ##AT##-##AT## Y`` in hypotheses and references (WMT'14, Vaswani et al.).
- ``sacrebleu``: sacrebleu's default 13a tokenization on detokenized text (IWSLT'17, Table 2).

Beside it, every dataset is scored as the field compares systems today: sacreBLEU (13a) and chrF of
the detokenized output against the original, untokenized references (``lowercase=True``, signature
``case:lc``, for models trained on lowercased text). Every score carries sacrebleu's signature.
"""

import re
from typing import Dict, List, Sequence

CONVENTIONS = ("tokenized", "compound_split", "sacrebleu")
_COMPOUND = re.compile(r"(\S)-(\S)")


def compound_split(line: str) -> str:
    """``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'``: non-overlapping, left to right."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def _bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str, lowercase: bool = False) -> Dict:
    import sacrebleu
    from sacrebleu.metrics import BLEU

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    metric = BLEU(tokenize=tokenize, force=True, lowercase=lowercase)  # force: tokenized input is intended here
    score = metric.corpus_score(list(hyps), [list(refs)])
    return {"bleu": round(score.score, 4), "signature": str(metric.get_signature()),
            "precisions": [round(p, 4) for p in score.precisions], "bp": round(score.bp, 4),
            "sys_len": score.sys_len, "ref_len": score.ref_len, "sacrebleu_version": sacrebleu.__version__}


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str]) -> Dict:
    """BLEU-4 on whitespace tokens (sacrebleu ``tokenize='none'``), corpus level, as multi-bleu.perl."""
    return _bleu(hyps, refs, "none")


def compound_split_bleu(hyps: Sequence[str], refs: Sequence[str]) -> Dict:
    return tokenized_bleu([compound_split(h) for h in hyps], [compound_split(r) for r in refs])


def detokenize(lines: Sequence[str], lang: str) -> List[str]:
    """Moses detokenization (sacremoses), undoing ``&apos;``-style escapes and ``@-@`` joins."""
    from sacremoses import MosesDetokenizer

    md = MosesDetokenizer(lang=lang)
    return [md.detokenize(line.replace(" @-@ ", "-").split()) for line in lines]


def sacrebleu_13a(hyps: Sequence[str], refs: Sequence[str], lowercase: bool = False) -> Dict:
    """sacrebleu's default BLEU (13a tokenization; ``lowercase``: case-insensitive) on detokenized text."""
    return _bleu(hyps, refs, "13a", lowercase)


def chrf(hyps: Sequence[str], refs: Sequence[str], lowercase: bool = False) -> Dict:
    """sacrebleu's chrF (character 6-grams, beta 2) on detokenized text."""
    import sacrebleu
    from sacrebleu.metrics import CHRF

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    metric = CHRF(lowercase=lowercase)
    score = metric.corpus_score(list(hyps), [list(refs)])
    return {"chrf": round(score.score, 4), "signature": str(metric.get_signature()),
            "sacrebleu_version": sacrebleu.__version__}


def paper_stats(convention: str, hyps: Sequence[str], refs: Sequence[str]) -> List[List[int]]:
    """Per-sentence BLEU sufficient statistics of the paper's convention (for significance tests,
    :mod:`labo_fairseq.scoring.stats`): the statistics of :func:`paper_bleu`'s corpus score."""
    from labo_fairseq.scoring import stats

    if convention == "compound_split":
        hyps, refs = [compound_split(h) for h in hyps], [compound_split(r) for r in refs]
    elif convention not in CONVENTIONS:
        raise ValueError(f"unknown BLEU convention {convention!r}; one of {', '.join(CONVENTIONS)}")
    return stats.sentence_stats(stats.metric("sacrebleu" if convention == "sacrebleu" else "bleu"), hyps, refs)


def paper_bleu(convention: str, hyps: Sequence[str], refs: Sequence[str]) -> Dict:
    if convention == "tokenized":
        return tokenized_bleu(hyps, refs)
    if convention == "compound_split":
        return compound_split_bleu(hyps, refs)
    if convention == "sacrebleu":
        return sacrebleu_13a(hyps, refs)
    raise ValueError(f"unknown BLEU convention {convention!r}; one of {', '.join(CONVENTIONS)}")
