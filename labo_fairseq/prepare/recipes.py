"""The datasets of the paper, each following fairseq's ``examples/translation/prepare-*.sh``.

A recipe is a list of named steps over a :class:`~labo_fairseq.prepare.pipeline.Workspace`; text
goes to ``--out`` (fairseq's ``tmp/`` and BPE'd files), the binarized data to ``--dest``. One
binarized directory serves both directions of a pair (fairseq's translation task finds
``train.de-en.*`` for ``-s en -t de`` too).
"""

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from labo_fairseq.prepare import text as T
from labo_fairseq.prepare.pipeline import (
    PrepareError, Workspace, atomic_open, count_lines, fairseq_preprocess, parallel_map, read_lines, tool_versions, write_lines,
)
from labo_fairseq.prepare.sources import Archive, Sources

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
    extra: Dict = field(default_factory=dict)


def _tokenize(lines: List[str], lang: str, workers: int, desc: str, aggressive=False, normalize=False, lower=False):
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


def joint_bpe(langs, text_dir: Path, out_dir: Path, code: Path, merges: int, workers: int, prefix: str = "") -> None:
    """``learn_bpe.py -s MERGES`` on the concatenated ``train.*`` of ``langs``; ``apply_bpe.py`` to
    train/valid/test of each language, written to ``out_dir/PREFIXsplit.lang``."""
    learn_bpe([text_dir / f"train.{lang}" for lang in langs], code, merges)
    for lang in langs:
        for split_ in ("train", "valid", "test"):
            apply_bpe(code, text_dir / f"{split_}.{lang}", out_dir / f"{prefix}{split_}.{lang}", workers)


def binarize_joined(src: str, tgt: str, opt: "Options") -> None:
    """``fairseq-preprocess --joined-dictionary`` of ``--out/{train,valid,test}.{src,tgt}``."""
    fairseq_preprocess(["--source-lang", src, "--target-lang", tgt, "--joined-dictionary",
                        "--trainpref", opt.out / "train", "--validpref", opt.out / "valid",
                        "--testpref", opt.out / "test", "--destdir", opt.dest, "--workers", opt.workers])


def run_steps(ws: Workspace, steps) -> None:
    for fn in steps:
        ws.step(fn.__name__, fn)


def bilingual_counts(opt: "Options", src: str) -> Dict[str, int]:
    return {s: count_lines(opt.out / f"{s}.{src}") for s in ("train", "valid", "test")}


def _check_counts(name: str, counts: Dict[str, int], full: bool) -> Dict:
    paper = PAPER_COUNTS.get(name, {})
    if not full:
        return {"paper": paper, "checked": False, "why": "partial/stand-in inputs: counts not comparable"}
    diffs = {k: {"ours": counts.get(k), "paper": v} for k, v in paper.items() if counts.get(k) != v}
    return {"paper": paper, "checked": True, "match": not diffs, "differences": diffs}


# ------------------------------------------------------------------------------- IWSLT'14


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


def prepare_iwslt14(src: str, opt: Options) -> Workspace:
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
            write_lines(tmp / f"train.tags.{pair}.tok.{lang}", _tokenize(lines, lang, opt.workers, f"tokenize train.{lang}"))
            for s in iwslt14_test_sets(src):
                lines = read_lines(tmp / f"{s}.{pair}.raw.{lang}")
                write_lines(tmp / f"{s}.{pair}.{lang}", _tokenize(lines, lang, opt.workers, "", lower=True))

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

    def bpe():
        """learn_bpe.py -s MERGES on train.SRC + train.TGT; apply_bpe.py to train/valid/test"""
        joint_bpe(langs, tmp, opt.out, opt.out / "code", merges, opt.workers)

    def binarize():
        """fairseq-preprocess --joined-dictionary"""
        binarize_joined(src, tgt, opt)

    run_steps(ws, (extract, tokenize, clean, split, bpe, binarize))
    if not opt.dry_run:
        counts = bilingual_counts(opt, src)
        full = merges == 10000 and not opt.extra.get("stand_in")
        ws.write_manifest({
            "dataset": name, "recipe": "fairseq examples/translation/prepare-iwslt14.sh",
            "directions": [f"{src}-{tgt}", f"{tgt}-{src}"], "text_dir": str(opt.out), "data_bin": str(opt.dest),
            "counts": counts, "counts_vs_paper": _check_counts(name, counts, full),
            "bpe": {"tool": "subword-nmt", "merges": merges, "joint": True, "code": str(opt.out / "code")},
            "tokenizer": "sacremoses (tokenizer.perl -l LANG, escaping on), lowercased",
            "clean": {"min": 1, "max": 175, "ratio": 1.5}, "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws


# ------------------------------------------------------------------------------- IWSLT'17


def iwslt17_train_archive(src: str) -> Archive:
    md5 = {"de": "ca2b94d694150d4d6c5dc64c200fa589", "fr": "19927da9de0f40348cad9c0fc61642ac"}[src]
    return Archive(f"{src}-en.tgz", key="2017-01-trnted",
                   urls=(f"{WIT3}/2017-01-trnted/texts/{src}/en/{src}-en.tgz",
                         f"{WIT3_MIRROR}/2017-01-trnted/texts/{src}/en/{src}-en.tgz"), md5=md5)


def iwslt17_test_archive(a: str, b: str) -> Archive:
    """The official 2017 evaluation archives (source side only); md5 as recorded by sacrebleu."""
    md5 = {"de-en": "e3f5b2a075a2da1a395c8b60bf1e9be1", "en-de": "b68e7097b179491f6c466ef41ad72b9b",
           "fr-en": "79bf7a2ef02d226875f55fb076e7e473", "en-fr": "1849bcc3b006dc0642a8843b11aa7192"}[f"{a}-{b}"]
    return Archive(f"{a}-{b}.tgz", key="2017-01-ted-test",
                   urls=(f"{WIT3}/2017-01-ted-test/texts/{a}/{b}/{a}-{b}.tgz",
                         f"{WIT3_MIRROR}/2017-01-ted-test/texts/{a}/{b}/{a}-{b}.tgz"), md5=md5)


IWSLT17_VALID = ["dev2010", "tst2010", "tst2011", "tst2012", "tst2013", "tst2014", "tst2015"]
IWSLT17_TEST = ["tst2017"]


def iwslt17_test_lines(sources: Sources, src: str, tgt: str, test_set: str) -> Tuple[List[str], List[str]]:
    """Source and reference segments of an official test set: the ``src-tgt`` archive holds the
    source side, the ``tgt-src`` archive the same talks in the target language (as sacrebleu pairs them)."""
    src_xml = sources.lines(iwslt17_test_archive(src, tgt), f"{src}-{tgt}/IWSLT17.TED.{test_set}.{src}-{tgt}.{src}.xml")
    ref_xml = sources.lines(iwslt17_test_archive(tgt, src), f"{tgt}-{src}/IWSLT17.TED.{test_set}.{tgt}-{src}.{tgt}.xml")
    return list(T.xml_segments(src_xml)), list(T.xml_segments(ref_xml))


def prepare_iwslt17(opt: Options) -> Workspace:
    import sentencepiece as spm

    name, srcs, tgt = "iwslt17.de_fr-en", ("de", "fr"), "en"
    ws = Workspace(opt.out, opt.dest, name, opt.force, opt.dry_run)
    if ws.finished:
        return ws
    raw, vocab = opt.out / "raw", opt.bpe_merges or 16384
    valid_sets = opt.extra.get("valid_sets", IWSLT17_VALID)
    test_sets = opt.extra.get("test_sets", IWSLT17_TEST)

    def extract():
        """train.tags.* filtered as fairseq's script; valid sets dev2010, tst2010-2015; test tst2017"""
        for src in srcs:
            pair, archive = f"{src}-{tgt}", iwslt17_train_archive(src)
            for lang in (src, tgt):
                lines = opt.sources.lines(archive, f"{pair}/train.tags.{pair}.{lang}")
                write_lines(raw / f"train.{pair}.{lang}", T.train_tags_lines(lines, T.IWSLT17_TRAIN_DROP, strip=True))
                for i, s in enumerate(valid_sets):
                    xml = opt.sources.lines(archive, f"{pair}/IWSLT17.TED.{s}.{pair}.{lang}.xml")
                    write_lines(raw / f"valid{i}.{pair}.{lang}", T.xml_segments(xml))
            for i, s in enumerate(test_sets):
                src_lines, ref_lines = iwslt17_test_lines(opt.sources, src, tgt, s)
                if len(src_lines) != len(ref_lines):
                    raise PrepareError(f"IWSLT17 {s} {pair}: {len(src_lines)} source vs {len(ref_lines)} reference segments")
                write_lines(raw / f"test{i}.{pair}.{src}", src_lines)
                write_lines(raw / f"test{i}.{pair}.{tgt}", ref_lines)

    def spm_train():
        """spm_train --vocab_size=16384 --character_coverage=1.0 --model_type=bpe over all train sides"""
        files = [str(raw / f"train.{s}-{tgt}.{lang}") for s in srcs for lang in (s, tgt)]
        spm.SentencePieceTrainer.train(
            input=",".join(files), model_prefix=str(opt.out / "sentencepiece.bpe"), vocab_size=vocab,
            character_coverage=1.0, model_type="bpe", num_threads=opt.workers, minloglevel=2,
            input_sentence_size=opt.extra.get("spm_input_sentence_size", 0),
        )

    def spm_encode():
        """spm_encode --output_format=piece; train pairs with a side outside 1..250 pieces dropped"""
        sp = spm.SentencePieceProcessor(model_file=str(opt.out / "sentencepiece.bpe.model"))
        enc = lambda lines: [" ".join(sp.encode(line, out_type=str)) for line in lines]  # noqa: E731
        for src in srcs:
            pair = f"{src}-{tgt}"
            a, b = (enc(read_lines(raw / f"train.{pair}.{lang}")) for lang in (src, tgt))
            keep = [(x, y) for x, y in zip(a, b) if 1 <= len(x.split()) <= 250 and 1 <= len(y.split()) <= 250]
            for j, lang in enumerate((src, tgt)):
                write_lines(opt.out / f"train.bpe.{pair}.{lang}", (p[j] for p in keep))
            for kind, sets in (("valid", valid_sets), ("test", test_sets)):
                for i in range(len(sets)):
                    for lang in (src, tgt):
                        write_lines(opt.out / f"{kind}{i}.bpe.{pair}.{lang}", enc(read_lines(raw / f"{kind}{i}.{pair}.{lang}")))

    def binarize():
        """fairseq-preprocess per pair, one dictionary over all languages (multilingual_translation)"""
        # One joined dictionary: the sentencepiece model is joint, so every language shares it.
        dict_txt = opt.out / "dict.txt"
        pieces = []
        with open(opt.out / "sentencepiece.bpe.vocab", encoding="utf-8") as f:
            for line in f:
                piece = line.split("\t")[0]
                if piece not in ("<unk>", "<s>", "</s>"):
                    pieces.append(f"{piece} 1")
        write_lines(dict_txt, pieces)
        for src in srcs:
            pair = f"{src}-{tgt}"
            valid = ",".join(str(opt.out / f"valid{i}.bpe.{pair}") for i in range(len(valid_sets)))
            test = ",".join(str(opt.out / f"test{i}.bpe.{pair}") for i in range(len(test_sets)))
            fairseq_preprocess(["--source-lang", src, "--target-lang", tgt, "--srcdict", dict_txt, "--tgtdict", dict_txt,
                                "--trainpref", opt.out / f"train.bpe.{pair}", "--validpref", valid, "--testpref", test,
                                "--destdir", opt.dest, "--workers", opt.workers])

    run_steps(ws, (extract, spm_train, spm_encode, binarize))
    if not opt.dry_run:
        counts = {}
        for src in srcs:
            pair = f"{src}-{tgt}"
            counts[f"train.{pair}"] = count_lines(opt.out / f"train.bpe.{pair}.{src}")
            counts[f"valid.{pair}"] = sum(count_lines(opt.out / f"valid{i}.bpe.{pair}.{src}") for i in range(len(valid_sets)))
            counts[f"test.{pair}"] = sum(count_lines(opt.out / f"test{i}.bpe.{pair}.{src}") for i in range(len(test_sets)))
        full = vocab == 16384 and not opt.extra.get("stand_in")
        ws.write_manifest({
            "dataset": name, "recipe": "fairseq examples/translation/prepare-iwslt17-multilingual.sh",
            "task": "multilingual_translation --lang-pairs de-en,fr-en", "text_dir": str(opt.out), "data_bin": str(opt.dest),
            "valid_sets": valid_sets, "test_sets": test_sets,
            "counts": counts, "counts_vs_paper": _check_counts(name, counts, full),
            "sentencepiece": {"vocab_size": vocab, "model_type": "bpe", "character_coverage": 1.0,
                              "model": str(opt.out / "sentencepiece.bpe.model"), "train_filter": "1..250 pieces"},
            "raw_text_for_sacrebleu": str(raw), "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws


# --------------------------------------------------------------------------------- WMT'14

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
                        _tokenize(lines, lang, opt.workers, f"tokenize train.{lang}", aggressive=True, normalize=True))
            write_lines(tmp / f"test.{lang}", _tokenize(newstest2014(opt.sources, lang), lang, opt.workers, "", aggressive=True))

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
        full = merges == 40000 and not opt.extra.get("stand_in")
        ws.write_manifest({
            "dataset": name, "recipe": "fairseq examples/translation/prepare-wmt14en2de.sh",
            "directions": ["en-de", "de-en"], "text_dir": str(opt.out), "data_bin": str(opt.dest),
            "counts": counts, "counts_vs_paper": _check_counts(name, counts, full),
            "bpe": {"tool": "subword-nmt", "merges": merges, "joint": True, "code": str(opt.out / "code")},
            "tokenizer": "sacremoses: normalize-punctuation, remove-non-printing-char, tokenizer.perl -a (train); -a (test)",
            "clean": {"min": 1, "max": 250, "ratio": 1.5, "after_bpe": True},
            "note": "compound splitting for the paper's BLEU is part of evaluation, not preparation",
            "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws


# ------------------------------------------------------------------------------ Multi30k

MULTI30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
# split -> (file stem in the official repository, git blob SHA-1 of its .de.gz and .en.gz)
MULTI30K_FILES = {
    "train": ("train", "3869154c6298e22b3dc9ed3b17fd45bf00276b94", "8226b4b333656238e113284cf738778e1287b52e"),
    "valid": ("val", "0907cab7a248be8e15ac418d517343899351db18", "8eb30ab9e5edd301e4c94330713c88513dd43dbc"),
    "test": ("test_2016_flickr", "96b762cc43d913a5d23e5ec65acbc58a50d0a9b8", "c3c1142a4d12fa9d7736c81dca0dcea51975477e"),
}
MULTI30K_COUNTS = {"train": 29000, "valid": 1014, "test": 1000}


def multi30k_file(split: str, lang: str) -> Archive:
    stem, de_sha1, en_sha1 = MULTI30K_FILES[split]
    return Archive(f"{stem}.{lang}.gz", (f"{MULTI30K}/{stem}.{lang}.gz",), git_sha1=de_sha1 if lang == "de" else en_sha1,
                   key="multi30k", single=True)


def prepare_multi30k(opt: Options) -> Workspace:
    """Multi30k task 1 de-en (29k image-caption pairs; test = test_2016_flickr): the IWSLT'14 recipe's
    text steps (Moses tokenization, lowercase, joint subword-nmt BPE). Not in the paper: the small real
    corpus of the quickstart."""
    name, src, tgt = "multi30k.de-en", "de", "en"
    ws = Workspace(opt.out, opt.dest, name, opt.force, opt.dry_run)
    if ws.finished:
        return ws
    tmp, merges, langs = opt.out / "tmp", opt.bpe_merges or 5000, (src, tgt)

    def extract():
        """train / val / test_2016_flickr .gz files of the official repository"""
        for split_ in MULTI30K_FILES:
            for lang in langs:
                write_lines(tmp / f"{split_}.raw.{lang}", opt.sources.lines(multi30k_file(split_, lang), ""))

    def tokenize():
        """tokenizer.perl -l LANG (sacremoses) | lowercase.perl"""
        for split_ in MULTI30K_FILES:
            for lang in langs:
                lines = read_lines(tmp / f"{split_}.raw.{lang}")
                write_lines(tmp / f"{split_}.{lang}", _tokenize(lines, lang, opt.workers, f"tokenize {split_}.{lang}", lower=True))

    def bpe():
        """learn_bpe.py -s MERGES on train.de + train.en; apply_bpe.py to train/valid/test"""
        joint_bpe(langs, tmp, opt.out, opt.out / "code", merges, opt.workers)

    def binarize():
        """fairseq-preprocess --joined-dictionary"""
        binarize_joined(src, tgt, opt)

    run_steps(ws, (extract, tokenize, bpe, binarize))
    if not opt.dry_run:
        counts = bilingual_counts(opt, src)
        if counts != MULTI30K_COUNTS:
            raise PrepareError(f"{name}: counts {counts} differ from the official {MULTI30K_COUNTS}")
        ws.write_manifest({
            "dataset": name, "recipe": "IWSLT'14 text steps (Moses, lowercase, joint BPE) on Multi30k task 1",
            "directions": ["de-en", "en-de"], "text_dir": str(opt.out), "data_bin": str(opt.dest), "counts": counts,
            "bpe": {"tool": "subword-nmt", "merges": merges, "joint": True, "code": str(opt.out / "code")},
            "tokenizer": "sacremoses (tokenizer.perl -l LANG, escaping on), lowercased",
            "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws


DATASETS = {
    "iwslt14.de-en": lambda o: prepare_iwslt14("de", o),
    "iwslt14.fr-en": lambda o: prepare_iwslt14("fr", o),
    "iwslt17.de_fr-en": prepare_iwslt17,
    "wmt14.en-de": prepare_wmt14,
    "multi30k.de-en": prepare_multi30k,
}
