"""WMT'14 en-de as fairseq's ``examples/translation/prepare-wmt14en2de.sh``."""

from typing import List

from labo_fairseq.runtime.files import read_lines, write_lines
from labo_fairseq.study.prepare import text as T
from labo_fairseq.study.prepare.common import (
    RAW,
    Options,
    bilingual_counts,
    binarize_joined,
    check_counts,
    check_raw,
    joint_bpe,
    keep_raw,
    moses_tokenize,
    run_steps,
)
from labo_fairseq.study.prepare.pipeline import Workspace, tool_versions
from labo_fairseq.study.prepare.sources import Archive, Sources

WMT14_ARCHIVES = {
    "europarl": Archive("training-parallel-europarl-v7.tgz", ("http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",)),
    "commoncrawl": Archive("training-parallel-commoncrawl.tgz", ("http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",)),
    "nc": Archive("training-parallel-nc-v12.tgz", ("http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",)),
    "test": Archive("test-full.tgz", ("http://statmt.org/wmt14/test-full.tgz",)),
}
WMT14_CORPORA = [("europarl", "training/europarl-v7.de-en"), ("commoncrawl", "commoncrawl.de-en"),
                 ("nc", "training/news-commentary-v12.de-en")]


def newstest2014(sources: Sources, lang: str) -> List[str]:
    """Segments of newstest2014 (full, 3003) in ``lang``: the src file for en, ref for de (en-de)."""
    kind = "src" if lang == "en" else "ref"
    return list(T.xml_segments(sources.lines(WMT14_ARCHIVES["test"], f"test-full/newstest2014-deen-{kind}.{lang}.sgm")))


def prepare_wmt14(opt: Options) -> Workspace:
    # Long: fairseq's prepare-wmt14en2de.sh as one recipe: its steps, in its order, as short nested
    # functions sharing the recipe's names (tmp, merges, langs), then the manifest.
    name, src, tgt = "wmt14.en-de", "en", "de"
    ws = Workspace(opt.out, opt.dest, name, opt.force, opt.dry_run)
    if ws.finished:
        return ws
    tmp, merges, langs = opt.out / "tmp", opt.bpe_merges or 40000, (src, tgt)

    def tokenize():
        """normalize-punctuation.perl | remove-non-printing-char.perl | tokenizer.perl -a (train); tokenizer.perl -a (test)"""
        for lang in langs:
            lines: List[str] = []
            for key, corpus in WMT14_CORPORA:
                lines += opt.sources.lines(WMT14_ARCHIVES[key], f"{corpus}.{lang}")
            write_lines(tmp / f"train.tags.en-de.tok.{lang}",
                        moses_tokenize(lines, lang, opt.workers, f"tokenize train.{lang}", aggressive=True, normalize=True))
            test = newstest2014(opt.sources, lang)
            keep_raw(opt.out, "test", lang, test)
            write_lines(tmp / f"test.{lang}", moses_tokenize(test, lang, opt.workers, "", aggressive=True))

    def split():
        """valid = every 100th training line, train = the rest"""
        for lang in langs:
            valid, train = T.every_nth(read_lines(tmp / f"train.tags.en-de.tok.{lang}"), 100)
            write_lines(tmp / f"valid.{lang}", valid)
            write_lines(tmp / f"train.{lang}", train)

    def bpe():
        """learn_bpe.py -s 40000 on train.en + train.de; apply_bpe.py to train/valid/test"""
        joint_bpe(langs, tmp, tmp, opt.out / "code", merges, opt.workers, prefix="bpe.")

    def clean():
        """clean-corpus-n.perl -ratio 1.5 bpe.{train,valid} en de ... 1 250; test copied"""
        for split_ in ("train", "valid"):
            a, b = (read_lines(tmp / f"bpe.{split_}.{lang}") for lang in langs)
            kept = list(T.clean_corpus(zip(a, b), 1, 250, 1.5))
            for i, lang in enumerate(langs):
                write_lines(opt.out / f"{split_}.{lang}", (p[i] for p in kept))
        for lang in langs:
            write_lines(opt.out / f"test.{lang}", read_lines(tmp / f"bpe.test.{lang}"))

    def binarize():
        """fairseq-preprocess --joined-dictionary"""
        binarize_joined(src, tgt, opt)

    run_steps(ws, (tokenize, split, bpe, clean, binarize))
    if not opt.dry_run:
        counts = bilingual_counts(opt, src)
        full = merges == 40000 and not opt.stand_in
        ws.write_manifest({
            "dataset": name, "recipe": "fairseq examples/translation/prepare-wmt14en2de.sh",
            "directions": ["en-de", "de-en"], "text_dir": str(opt.out), "data_bin": str(opt.dest),
            "counts": counts, "counts_vs_paper": check_counts(name, counts, full),
            "bpe": {"tool": "subword-nmt", "merges": merges, "joint": True, "code": str(opt.out / "code")},
            "raw_references": {"dir": str(opt.out / RAW), "what": "newstest2014 (full, 3003) SGML segments",
                               "counts": check_raw(opt.out, ("test",), langs)},
            "tokenizer": "sacremoses: normalize-punctuation, remove-non-printing-char, tokenizer.perl -a (train); -a (test)",
            "clean": {"min": 1, "max": 250, "ratio": 1.5, "after_bpe": True},
            "note": "compound splitting for the paper's BLEU is part of evaluation, not preparation",
            "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws
