"""IWSLT'17 {de,fr}->en for one multilingual model, as fairseq's ``prepare-iwslt17-multilingual.sh``."""

from dataclasses import dataclass, field
from typing import List, Tuple

from labo_fairseq.runtime.files import count_lines, read_lines, write_lines
from labo_fairseq.study.prepare import text as T
from labo_fairseq.study.prepare.common import WIT3, WIT3_MIRROR, Options, check_counts, run_steps
from labo_fairseq.study.prepare.pipeline import PrepareError, Workspace, fairseq_preprocess, tool_versions
from labo_fairseq.study.prepare.sources import Archive, Sources


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


@dataclass
class Iwslt17Options(Options):
    valid_sets: List[str] = field(default_factory=lambda: list(IWSLT17_VALID))
    test_sets: List[str] = field(default_factory=lambda: list(IWSLT17_TEST))
    spm_input_sentence_size: int = 0  # sentencepiece's sample of training sentences (0: all)


def prepare_iwslt17(opt: Options) -> Workspace:
    # Long: fairseq's prepare-iwslt17-multilingual.sh as one recipe: its steps, in its order, as short nested
    # functions sharing the recipe's names (raw, vocab, the test sets), then the manifest.
    if not isinstance(opt, Iwslt17Options):
        opt = Iwslt17Options(**vars(opt))
    import sentencepiece as spm

    name, srcs, tgt = "iwslt17.de_fr-en", ("de", "fr"), "en"
    ws = Workspace(opt.out, opt.dest, name, opt.force, opt.dry_run)
    if ws.finished:
        return ws
    raw, vocab = opt.out / "raw", opt.bpe_merges or 16384
    valid_sets, test_sets = opt.valid_sets, opt.test_sets

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
            input_sentence_size=opt.spm_input_sentence_size,
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
        full = vocab == 16384 and not opt.stand_in
        ws.write_manifest({
            "dataset": name, "recipe": "fairseq examples/translation/prepare-iwslt17-multilingual.sh",
            "task": "multilingual_translation --lang-pairs de-en,fr-en", "text_dir": str(opt.out), "data_bin": str(opt.dest),
            "valid_sets": valid_sets, "test_sets": test_sets,
            "counts": counts, "counts_vs_paper": check_counts(name, counts, full),
            "sentencepiece": {"vocab_size": vocab, "model_type": "bpe", "character_coverage": 1.0,
                              "model": str(opt.out / "sentencepiece.bpe.model"), "train_filter": "1..250 pieces"},
            "raw_text_for_sacrebleu": str(raw), "inputs": opt.sources.used, "tools": tool_versions(),
        })
    return ws
