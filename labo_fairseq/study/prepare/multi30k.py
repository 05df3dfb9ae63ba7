"""Multi30k task 1 de-en: not in the paper; the small real corpus of the quickstart and the tests."""

from labo_fairseq.runtime.files import read_lines, write_lines
from labo_fairseq.study.prepare.common import (
    RAW,
    Options,
    bilingual_counts,
    binarize_joined,
    check_raw,
    joint_bpe,
    keep_raw,
    moses_tokenize,
    run_steps,
)
from labo_fairseq.study.prepare.pipeline import PrepareError, Workspace, tool_versions
from labo_fairseq.study.prepare.sources import Archive

MULTI30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
# split -> (file stem in the official repository, git blob SHA-1 of its .de.gz and .en.gz)
MULTI30K_FILES = {
    "train": ("train", "3869154c6298e22b3dc9ed3b17fd45bf00276b94", "8226b4b333656238e113284cf738778e1287b52e"),
    "valid": ("val", "0907cab7a248be8e15ac418d517343899351db18", "8eb30ab9e5edd301e4c94330713c88513dd43dbc"),
    "test": ("test_2016_flickr", "96b762cc43d913a5d23e5ec65acbc58a50d0a9b8", "c3c1142a4d12fa9d7736c81dca0dcea51975477e"),
    # fairseq subsets test1, test2: the other WMT'17 multimodal test sets, for a comparison on three test sets
    "test1": ("test_2017_flickr", "b7b1f6bbf760b317c555452d1b18fba6412237cd", "2ee09c0e5404dd6d0ce0516aabc5f6043ea24ce8"),
    "test2": ("test_2017_mscoco", "d4dc0f3c33ee9a834155323ff002908d59b5ddee", "4540747e16403a7220c99f7a61fd418e16c00ec0"),
}
MULTI30K_COUNTS = {"train": 29000, "valid": 1014, "test": 1000, "test1": 1000, "test2": 461}


def multi30k_file(split: str, lang: str) -> Archive:
    stem, de_sha1, en_sha1 = MULTI30K_FILES[split]
    return Archive(f"{stem}.{lang}.gz", (f"{MULTI30K}/{stem}.{lang}.gz",), git_sha1=de_sha1 if lang == "de" else en_sha1,
                   key="multi30k", single=True)


def prepare_multi30k(opt: Options) -> Workspace:
    """Multi30k task 1 de-en (29k image-caption pairs; test = test_2016_flickr, test1 = test_2017_flickr,
    test2 = test_2017_mscoco): the IWSLT'14 recipe's
    text steps (Moses tokenization, lowercase, joint subword-nmt BPE). Not in the paper: the small real
    corpus of the quickstart."""
    name, src, tgt = "multi30k.de-en", "de", "en"
    ws = Workspace(opt.out, opt.dest, name, opt.force, opt.dry_run)
    if ws.finished:
        return ws
    tmp, merges, langs = opt.out / "tmp", opt.bpe_merges or 5000, (src, tgt)

    def extract():
        """train / val / test_2016_flickr / test_2017_flickr / test_2017_mscoco .gz files of the official repository"""
        for split_ in MULTI30K_FILES:
            for lang in langs:
                lines = opt.sources.lines(multi30k_file(split_, lang), "")
                write_lines(tmp / f"{split_}.raw.{lang}", lines)
                if split_.startswith("test"):
                    keep_raw(opt.out, split_, lang, lines)

    def tokenize():
        """tokenizer.perl -l LANG (sacremoses) | lowercase.perl"""
        for split_ in MULTI30K_FILES:
            for lang in langs:
                lines = read_lines(tmp / f"{split_}.raw.{lang}")
                tokens = moses_tokenize(lines, lang, opt.workers, f"tokenize {split_}.{lang}", lower=True)
                write_lines(tmp / f"{split_}.{lang}", tokens)

    def bpe():
        """learn_bpe.py -s MERGES on train.de + train.en; apply_bpe.py to train/valid/test"""
        joint_bpe(langs, tmp, opt.out, opt.out / "code", merges, opt.workers, splits=tuple(MULTI30K_FILES))

    def binarize():
        """fairseq-preprocess --joined-dictionary"""
        binarize_joined(src, tgt, opt, tests=("test", "test1", "test2"))

    run_steps(ws, (extract, tokenize, bpe, binarize))
    if not opt.dry_run:
        counts = bilingual_counts(opt, src, tuple(MULTI30K_FILES))
        if counts != MULTI30K_COUNTS:
            raise PrepareError(f"{name}: counts {counts} differ from the official {MULTI30K_COUNTS}")
        ws.write_manifest({
            "dataset": name, "recipe": "IWSLT'14 text steps (Moses, lowercase, joint BPE) on Multi30k task 1",
            "raw_references": {"dir": str(opt.out / RAW), "what": "the official .gz files' text",
                               "counts": check_raw(opt.out, ("test", "test1", "test2"), langs)},
            "directions": ["de-en", "en-de"], "text_dir": str(opt.out), "data_bin": str(opt.dest), "counts": counts,
            "bpe": {"tool": "subword-nmt", "merges": merges, "joint": True, "code": str(opt.out / "code")},
            "tokenizer": "sacremoses (tokenizer.perl -l LANG, escaping on), lowercased",
            "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws
