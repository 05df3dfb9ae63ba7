"""IWSLT'14 de-en and fr-en as fairseq's ``examples/translation/prepare-iwslt14.sh``."""

from typing import List

from labo_fairseq.runtime.files import read_lines, write_lines
from labo_fairseq.study.prepare import text as T
from labo_fairseq.study.prepare.common import (
    RAW,
    WIT3,
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
from labo_fairseq.study.prepare.pipeline import PrepareError, Workspace, tool_versions
from labo_fairseq.study.prepare.sources import Archive


def iwslt14_archive(src: str) -> Archive:
    if src == "de":
        return Archive("de-en.tgz", key="iwslt14",
                       urls=("http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz",
                             f"{WIT3}/2014-01/texts/de/en/de-en.tgz"),
                       git_sha1="aa8c3f40f8836f1d43701448f94fe7e230082b4c")  # fairseq's orig/de-en.tgz
    # WIT3's 2014-01 fr-en archive is no longer served at its old address; get it from
    # https://wit3.fbk.eu/2014-01 and pass it with --source.
    return Archive(f"{src}-en.tgz", key="iwslt14", urls=(f"{WIT3}/2014-01/texts/{src}/en/{src}-en.tgz",))


def iwslt14_test_sets(src: str) -> List[str]:
    """fairseq's test concatenation order; the fr-en archive has no TEDX.dev2012."""
    sets = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
            "IWSLT14.TED.tst2012"]
    return [s for s in sets if src == "de" or "TEDX" not in s]


def iwslt14_raw_test(tmp, pair: str, src: str, lang: str) -> List[str]:
    """The test set's original text: the XML segments (``extract``'s ``*.raw.*`` files) in the test order."""
    lines: List[str] = []
    for s in iwslt14_test_sets(src):
        lines += read_lines(tmp / f"{s}.{pair}.raw.{lang}")
    return lines


def prepare_iwslt14(src: str, opt: Options) -> Workspace:
    # Long: fairseq's prepare-iwslt14.sh as one recipe: its steps, in its order, as short nested
    # functions sharing the recipe's names (pair, tmp, langs), then the manifest.
    tgt, pair = "en", f"{src}-en"
    name = f"iwslt14.{pair}"
    ws = Workspace(opt.out, opt.dest, name, opt.force, opt.dry_run)
    if ws.finished:
        return ws
    archive = iwslt14_archive(src)
    tmp, merges = opt.out / "tmp", opt.bpe_merges or 10000
    langs = (src, tgt)

    def extract():
        """raw text: train.tags.* filtered (url/talkid/keywords lines, title/description tags), XML dev/test segments"""
        for lang in langs:
            raw = T.train_tags_lines(opt.sources.lines(archive, f"{pair}/train.tags.{pair}.{lang}"))
            write_lines(tmp / f"train.tags.{pair}.raw.{lang}", raw)
            for s in iwslt14_test_sets(src):
                xml = opt.sources.lines(archive, f"{pair}/{s}.{pair}.{lang}.xml")
                write_lines(tmp / f"{s}.{pair}.raw.{lang}", T.xml_segments(xml))

    def tokenize():
        """tokenizer.perl -l LANG (sacremoses); dev/test also lowercase.perl"""
        for lang in langs:
            lines = read_lines(tmp / f"train.tags.{pair}.raw.{lang}")
            write_lines(tmp / f"train.tags.{pair}.tok.{lang}", moses_tokenize(lines, lang, opt.workers, f"tokenize train.{lang}"))
            for s in iwslt14_test_sets(src):
                lines = read_lines(tmp / f"{s}.{pair}.raw.{lang}")
                write_lines(tmp / f"{s}.{pair}.{lang}", moses_tokenize(lines, lang, opt.workers, "", lower=True))

    def clean():
        """clean-corpus-n.perl -ratio 1.5 ... 1 175, then lowercase.perl"""
        a, b = (read_lines(tmp / f"train.tags.{pair}.tok.{lang}") for lang in langs)
        if len(a) != len(b):
            raise PrepareError(f"train.tags.{pair}: {len(a)} {src} lines but {len(b)} {tgt} lines")
        kept = list(T.clean_corpus(zip(a, b), 1, 175, 1.5))
        for i, lang in enumerate(langs):
            write_lines(tmp / f"train.tags.{pair}.{lang}", (p[i].lower() for p in kept))

    def split():
        """valid = every 23rd training line, train = the rest; test = dev/test sets concatenated"""
        for lang in langs:
            valid, train = T.every_nth(read_lines(tmp / f"train.tags.{pair}.{lang}"), 23)
            write_lines(tmp / f"valid.{lang}", valid)
            write_lines(tmp / f"train.{lang}", train)
            test: List[str] = []
            for s in iwslt14_test_sets(src):
                test += read_lines(tmp / f"{s}.{pair}.{lang}")
            write_lines(tmp / f"test.{lang}", test)
            keep_raw(opt.out, "test", lang, iwslt14_raw_test(tmp, pair, src, lang))

    def bpe():
        """learn_bpe.py -s MERGES on train.SRC + train.TGT; apply_bpe.py to train/valid/test"""
        joint_bpe(langs, tmp, opt.out, opt.out / "code", merges, opt.workers)

    def binarize():
        """fairseq-preprocess --joined-dictionary"""
        binarize_joined(src, tgt, opt)

    run_steps(ws, (extract, tokenize, clean, split, bpe, binarize))
    if not opt.dry_run:
        counts = bilingual_counts(opt, src)
        full = merges == 10000 and not opt.stand_in
        ws.write_manifest({
            "dataset": name, "recipe": "fairseq examples/translation/prepare-iwslt14.sh",
            "directions": [f"{src}-{tgt}", f"{tgt}-{src}"], "text_dir": str(opt.out), "data_bin": str(opt.dest),
            "counts": counts, "counts_vs_paper": check_counts(name, counts, full),
            "bpe": {"tool": "subword-nmt", "merges": merges, "joint": True, "code": str(opt.out / "code")},
            "tokenizer": "sacremoses (tokenizer.perl -l LANG, escaping on), lowercased",
            "raw_references": {"dir": str(opt.out / RAW), "what": "the archive's XML segments, in the test order",
                               "counts": check_raw(opt.out, ("test",), langs)},
            "clean": {"min": 1, "max": 175, "ratio": 1.5}, "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws
