"""Helpers shared by the dataset recipes: options, Moses tokenization and subword-nmt BPE over
worker processes, joint binarization, the paper's counts."""

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from labo_fairseq.runtime.files import atomic_open, count_lines, read_lines, write_lines
from labo_fairseq.study.prepare import text as T
from labo_fairseq.study.prepare.pipeline import Workspace, fairseq_preprocess, parallel_map
from labo_fairseq.study.prepare.sources import Sources

WIT3 = "https://wit3.fbk.eu/archive"
WIT3_MIRROR = "https://raw.githubusercontent.com/hlt-mt/WIT3/master/archive"  # the WIT3 maintainers' mirror

# Appendix D of the paper (train / valid / test sentence pairs after preparation).
PAPER_COUNTS = {
    "iwslt14.de-en": {"train": 160239, "valid": 7283, "test": 6750},
    "iwslt14.fr-en": {"train": 168151, "valid": 7643, "test": 4493},
    "iwslt17.de_fr-en": {"train.de-en": 209522, "train.fr-en": 236652, "valid.de-en": 7887,
                         "valid.fr-en": 8277, "test.de-en": 5670, "test.fr-en": 7275},
    "wmt14.en-de": {"train": 3900502, "valid": 39414, "test": 3003},
}


@dataclass
class Options:
    sources: Sources
    out: Path
    dest: Path
    workers: int = max(1, os.cpu_count() or 1)
    force: bool = False
    dry_run: bool = False
    bpe_merges: Optional[int] = None  # override of the recipe's BPE merges / sentencepiece vocabulary
    stand_in: bool = False  # partial or stand-in inputs (tests): the paper's counts are not compared


def moses_tokenize(lines: List[str], lang: str, workers: int, desc: str, aggressive=False, normalize=False, lower=False):
    factory = _TokFactory(lang, aggressive, normalize, lower)
    return parallel_map(factory, lines, workers, desc=desc)


@dataclass(frozen=True)
class _TokFactory:
    lang: str
    aggressive: bool
    normalize: bool
    lower: bool

    def __call__(self):
        tok = T.MosesTokenizer(self.lang, aggressive_dash_splits=self.aggressive, normalize=self.normalize)
        return (lambda line: tok(line).lower()) if self.lower else tok


def learn_bpe(train_files: List[Path], code: Path, merges: int) -> None:
    """``cat train.* | learn_bpe.py -s MERGES > code`` (subword-nmt, min frequency 2)."""
    from subword_nmt.learn_bpe import learn_bpe as _learn

    joined = io.StringIO("".join(p.read_text(encoding="utf-8") for p in train_files))
    with atomic_open(code) as out:
        _learn(joined, out, merges)


@dataclass(frozen=True)
class _BpeFactory:
    code: str

    def __call__(self):
        from subword_nmt.apply_bpe import BPE

        with open(self.code, encoding="utf-8") as f:
            bpe = BPE(f)
        return lambda line: bpe.process_line(line + "\n").rstrip("\n")


def apply_bpe(code: Path, src: Path, dst: Path, workers: int) -> None:
    """``apply_bpe.py -c code < src > dst``."""
    write_lines(dst, parallel_map(_BpeFactory(str(code)), read_lines(src), workers, desc=f"bpe {src.name}"))


def joint_bpe(langs, text_dir: Path, out_dir: Path, code: Path, merges: int, workers: int, prefix: str = "",
              splits=("train", "valid", "test")) -> None:
    """``learn_bpe.py -s MERGES`` on the concatenated ``train.*`` of ``langs``; ``apply_bpe.py`` to
    each split of each language, written to ``out_dir/PREFIXsplit.lang``."""
    learn_bpe([text_dir / f"train.{lang}" for lang in langs], code, merges)
    for lang in langs:
        for split_ in splits:
            apply_bpe(code, text_dir / f"{split_}.{lang}", out_dir / f"{prefix}{split_}.{lang}", workers)


def binarize_joined(src: str, tgt: str, opt: "Options", tests=("test",)) -> None:
    """``fairseq-preprocess --joined-dictionary`` of ``--out/{train,valid,TESTS}.{src,tgt}`` (fairseq
    names further test sets test1, test2, ...)."""
    fairseq_preprocess(["--source-lang", src, "--target-lang", tgt, "--joined-dictionary",
                        "--trainpref", opt.out / "train", "--validpref", opt.out / "valid",
                        "--testpref", ",".join(str(opt.out / t) for t in tests), "--destdir", opt.dest,
                        "--workers", opt.workers])


def run_steps(ws: Workspace, steps) -> None:
    for fn in steps:
        ws.step(fn.__name__, fn)


def bilingual_counts(opt: "Options", src: str, splits=("train", "valid", "test")) -> Dict[str, int]:
    return {s: count_lines(opt.out / f"{s}.{src}") for s in splits}


def check_counts(name: str, counts: Dict[str, int], full: bool) -> Dict:
    paper = PAPER_COUNTS.get(name, {})
    if not full:
        return {"paper": paper, "checked": False, "why": "partial/stand-in inputs: counts not comparable"}
    diffs = {k: {"ours": counts.get(k), "paper": v} for k, v in paper.items() if counts.get(k) != v}
    return {"paper": paper, "checked": True, "match": not diffs, "differences": diffs}


RAW = "raw"  # TEXT/NAME/raw/SUBSET.LANG: the original, untokenized test text, scored by sacreBLEU and chrF


def keep_raw(out: Path, subset: str, lang: str, lines) -> None:
    """Keep a test set's original text (the archive's own segments, in test-set order)."""
    write_lines(out / RAW / f"{subset}.{lang}", lines)


def check_raw(out: Path, subsets, langs) -> Dict[str, int]:
    """Each kept raw file has as many lines as the prepared test set it belongs to (a PrepareError
    naming both counts otherwise); returns the counts, for the manifest."""
    from labo_fairseq.study.prepare.pipeline import PrepareError

    counts = {}
    for subset in subsets:
        for lang in langs:
            raw, prepared = out / RAW / f"{subset}.{lang}", out / f"{subset}.{lang}"
            n_raw, n_prepared = count_lines(raw), count_lines(prepared)
            if n_raw != n_prepared:
                raise PrepareError(f"{raw}: {n_raw} lines but the prepared test set {prepared} has {n_prepared}")
            counts[f"{subset}.{lang}"] = n_raw
    return counts
