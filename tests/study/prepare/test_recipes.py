"""Data preparation on the real files of the test-data directory (LABO_SHARED_DATA): conformance
with fairseq's IWSLT'14 output, the IWSLT'17/WMT'14 test-set readers, and each recipe end to end
on small stand-in inputs built from real dev/test text (it holds no training corpora)."""

import gzip
import json
import lzma
import re
import shutil
import subprocess
import sys

import pytest

from labo_fairseq.study.prepare import iwslt17, multi30k, wmt14
from labo_fairseq.study.prepare.common import Options
from labo_fairseq.study.prepare.sources import SourceError, Sources
from labo_fairseq.study.prepare.text import xml_segments
from tests.helpers import MULTI30K, REPO, SHARED, talk_text, write

IWSLT14 = SHARED / "iwslt14.de-en"
IWSLT17 = SHARED / "iwslt17" / "2017-01-ted-test"
WMT14 = SHARED / "wmt14.en-de"
# Tests that read the test-data directory; the others (bad inputs made here) run everywhere.
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data not found at {SHARED} (set LABO_SHARED_DATA)")
def _have_fairseq():
    try:
        import fairseq  # noqa: F401
        return True
    except ImportError:
        return False


def binarizes(test):
    """Runs fairseq-preprocess: the slow tier, skipped without fairseq."""
    skip = pytest.mark.skipif(not _have_fairseq(), reason="fairseq is not installed (scripts/install.sh)")
    return pytest.mark.slow(skip(test))


def xz_lines(path):
    with lzma.open(path, "rt", encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")[:-1]


def run_script(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------------------- conformance


@needs_data
@pytest.mark.slow  # tokenizes and BPEs 20k lines
def test_iwslt14_conformance_with_fairseqs_recipe():
    proc = run_script("scripts/iwslt14_conformance.py", "--data", SHARED)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"identical lines: tok\.de=([\d.]+)% tok\.en=([\d.]+)% bpe\.de=([\d.]+)% bpe\.en=([\d.]+)%", last)
    assert m, last
    assert all(float(v) >= 99.5 for v in m.groups()), last


# -------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("src,test_set,n", [("de", "tst2016", 1133), ("de", "tst2017", 1138),
                                            ("fr", "tst2016", 1159), ("fr", "tst2017", 1455)])
@needs_data
def test_iwslt17_official_test_archives(src, test_set, n):
    sources = Sources([IWSLT17], offline=True)
    src_lines, ref_lines = iwslt17.iwslt17_test_lines(sources, src, "en", test_set)
    assert len(src_lines) == len(ref_lines) == n
    assert all(line.strip() for line in src_lines + ref_lines)
    # the archives were md5-verified against sacrebleu's values
    assert all(v["verified"] == "md5" for k, v in sources.used.items())
@needs_data
def test_wmt14_newstest2014_sgm():
    sources = Sources([WMT14], offline=True)
    en, de = wmt14.newstest2014(sources, "en"), wmt14.newstest2014(sources, "de")
    assert len(en) == len(de) == 3003
    assert en[0] == "Gutach: Increased safety for pedestrians"
    assert de[0] == "Gutach: Noch mehr Sicherheit für Fußgänger"


# ------------------------------------------------------------------------ stand-in inputs


@pytest.fixture(scope="module")
def iwslt14_standin(tmp_path_factory):
    """train.tags.de-en.{de,en} from the real tst2010-2012 segments; the real XML dev/test files."""
    d = tmp_path_factory.mktemp("iwslt14_src")
    for lang in ("de", "en"):
        lines = []
        for s in ("IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012"):
            lines += talk_text(list(xml_segments(xz_lines(IWSLT14 / "orig" / "de-en" / f"{s}.de-en.{lang}.xml.xz"))), s)
        write(d / "de-en" / f"train.tags.de-en.{lang}", lines)
    return [d, IWSLT14 / "orig"]


@needs_data
@binarizes
def test_iwslt14_pipeline_end_to_end_resume_and_no_clobber(iwslt14_standin, tmp_path):
    out, dest = tmp_path / "text", tmp_path / "bin"
    args = ["-m", "labo_fairseq", "prepare", "iwslt14.de-en", "--offline", "--cache", tmp_path / "cache",
            "--out", out, "--dest", dest, "--bpe-merges", "800", "--workers", "2"]
    for s in iwslt14_standin:
        args += ["--source", s]
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr
    # The test set is fairseq's own, byte for byte (tokenized, lowercased).
    for lang in ("de", "en"):
        assert (out / "tmp" / f"test.{lang}").read_text(encoding="utf-8").split("\n")[:-1] == \
            xz_lines(IWSLT14 / "fairseq-tokenized" / "tmp" / f"test.{lang}.xz")
    m = json.loads((out / "manifest.json").read_text())
    raw = sum(1 for _ in (out / "tmp" / "train.tags.de-en.de").open())
    assert m["counts"]["test"] == 6750
    # The original references are kept: the XML segments, line-aligned with the prepared test set.
    assert m["raw_references"]["counts"] == {"test.de": 6750, "test.en": 6750}
    raw_en = (out / "raw" / "test.en").read_text(encoding="utf-8").splitlines()
    xml = []
    for s in ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
              "IWSLT14.TED.tst2012"):
        xml += list(xml_segments(xz_lines(IWSLT14 / "orig" / "de-en" / f"{s}.de-en.en.xml.xz")))
    assert raw_en == xml and raw_en[0][0].isupper()  # untokenized, mixed case
    assert_aligned(raw_en, (out / "tmp" / "test.en").read_text(encoding="utf-8").splitlines())
    assert m["counts"]["valid"] == raw // 23 and m["counts"]["train"] == raw - raw // 23
    assert m["counts_vs_paper"]["checked"] is False  # stand-in data and 800 merges
    assert m["bpe"]["merges"] == 800 and m["tools"]["sacremoses"]
    assert all(len(v["sha256"]) == 64 for v in m["inputs"].values())
    for f in ("dict.de.txt", "dict.en.txt", "train.de-en.de.bin", "valid.de-en.en.idx", "test.de-en.de.bin"):
        assert (dest / f).exists(), f
    assert len(open(out / "code", encoding="utf-8").read().splitlines()) == 801  # header + 800 merges

    # Re-running finishes nothing again and touches nothing.
    stamp = {p: p.stat().st_mtime_ns for p in list(out.rglob("*")) + list(dest.rglob("*")) if p.is_file()}
    again = run_script(*args)
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert stamp == {p: p.stat().st_mtime_ns for p in stamp}

    # An interrupted run resumes: remove the last steps' markers and outputs, re-run.
    (out / ".done" / "binarize").unlink()
    (out / "manifest.json").unlink()
    shutil.rmtree(dest)
    resumed = run_script(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "[skip] bpe (done)" in resumed.stderr and "[run] binarize" in resumed.stderr
    assert (dest / "train.de-en.de.bin").exists()

    # A directory this tool did not make is never touched, --force or not.
    foreign = tmp_path / "foreign"
    write(foreign / "precious.txt", ["keep me"])
    refused = run_script(*args[:-8], "--out", foreign, "--dest", tmp_path / "bin2", "--bpe-merges", "800", "--force")
    assert refused.returncode != 0 and "was not made by this tool" in refused.stderr
    assert (foreign / "precious.txt").read_text() == "keep me\n"
@needs_data
def test_dry_run_writes_nothing(iwslt14_standin, tmp_path):
    proc = run_script("-m", "labo_fairseq", "prepare", "iwslt14.de-en", "--dry-run", "--offline", "--out", tmp_path / "t",
                      "--dest", tmp_path / "b", "--source", iwslt14_standin[0])
    assert proc.returncode == 0, proc.stderr
    for step in ("extract", "tokenize", "clean", "split", "bpe", "binarize"):
        assert f"[dry-run] {step}:" in proc.stdout
    assert not (tmp_path / "t").exists() and not (tmp_path / "b").exists()


@needs_data
@binarizes
def test_iwslt17_pipeline_end_to_end(iwslt17_standin):
    """Stand-in 2017-01-trnted members from the real tst2016 talks (train and valid); the real,
    md5-verified 2017 evaluation archives for the tst2017 test sets (built in conftest)."""
    text, bin_dir, ws = iwslt17_standin
    m = json.loads(ws.manifest_path.read_text())
    assert m["counts"]["test.de-en"] == 1138 and m["counts"]["test.fr-en"] == 1455
    assert m["counts"]["valid.de-en"] == 1133 and m["counts"]["valid.fr-en"] == 1159
    # 1133 segments + the title and description lines (their text stays, as in fairseq's recipe),
    # less pairs with an empty side or over 250 pieces
    assert 1100 <= m["counts"]["train.de-en"] <= 1135
    assert m["sentencepiece"]["vocab_size"] == 1000
    for f in ("dict.de.txt", "dict.fr.txt", "dict.en.txt", "train.de-en.de.bin", "train.fr-en.en.bin",
              "valid.fr-en.fr.bin", "test.de-en.en.idx"):
        assert (bin_dir / f).exists(), f
    # raw, detokenized references are kept for sacrebleu, where evaluate looks for them
    from labo_fairseq.study.protocol import dataset_config, raw_reference
    for src, n in (("de", 1138), ("fr", 1455)):
        path = raw_reference(text.parent, dataset_config("iwslt17_multi"), "test", src, "en")
        assert len(path.read_text(encoding="utf-8").splitlines()) == n


@needs_data
@binarizes
def test_wmt14_pipeline_end_to_end(tmp_path):
    """Stand-in training corpora cut from the real newstest2014 text; the real test-full SGM files."""
    d = tmp_path / "src"
    sources = Sources([WMT14], offline=True)
    text = {lang: wmt14.newstest2014(sources, lang) for lang in ("en", "de")}
    cuts = [(0, 1000), (1000, 2000), (2000, 3003)]
    for (_, corpus), (lo, hi) in zip(wmt14.WMT14_CORPORA, cuts):
        for lang in ("en", "de"):
            write(d / f"{corpus}.{lang}", text[lang][lo:hi])
    opt = Options(sources=Sources([d, WMT14], cache=tmp_path / "cache", offline=True),
                          out=tmp_path / "text", dest=tmp_path / "bin", workers=2, bpe_merges=500,
                          stand_in=True)
    ws = wmt14.prepare_wmt14(opt)
    m = json.loads(ws.manifest_path.read_text())
    assert m["counts"]["test"] == 3003
    assert 0 < m["counts"]["valid"] <= 30 and 2800 < m["counts"]["train"] <= 2973  # every 100th, then cleaned
    assert "@-@" in (tmp_path / "text" / "tmp" / "test.en").read_text(encoding="utf-8")  # tokenizer -a
    # the original newstest2014 (full) segments are kept, line-aligned with the prepared test set
    assert m["raw_references"]["counts"] == {"test.en": 3003, "test.de": 3003}
    raw_de = (tmp_path / "text" / "raw" / "test.de").read_text(encoding="utf-8").splitlines()
    assert raw_de == text["de"] and raw_de[0] == "Gutach: Noch mehr Sicherheit für Fußgänger"
    assert_aligned(raw_de, (tmp_path / "text" / "tmp" / "test.de").read_text(encoding="utf-8").splitlines(), "de")
    assert (tmp_path / "bin" / "train.en-de.en.bin").exists() and (tmp_path / "bin" / "dict.de.txt").exists()


# ---------------------------------------------------------------------------- bad inputs
@needs_data
def test_corrupt_archive_with_published_checksum_is_rejected(tmp_path):
    bad = tmp_path / "2017-01-ted-test" / "de-en.tgz"
    bad.parent.mkdir()
    data = (IWSLT17 / "de-en.tgz").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    sources = Sources([tmp_path], cache=tmp_path / "cache", offline=True)
    with pytest.raises(SourceError, match="de-en.tgz"):
        iwslt17.iwslt17_test_lines(sources, "de", "en", "tst2017")


def test_truncated_archive_without_checksum_is_rejected(tmp_path):
    with open(tmp_path / "test-full.tgz", "wb") as f:
        f.write(gzip.compress(b"not a tar archive" * 100)[:200])
    with pytest.raises(SourceError, match=r"test-full.tgz: not a readable archive"):
        wmt14.newstest2014(Sources([tmp_path], cache=tmp_path / "cache", offline=True), "en")


def test_missing_input_offline_names_the_file(tmp_path):
    proc = run_script("-m", "labo_fairseq", "prepare", "wmt14.en-de", "--offline", "--source", tmp_path,
                      "--cache", tmp_path / "cache", "--out", tmp_path / "t", "--dest", tmp_path / "b")
    assert proc.returncode == 1
    assert "training-parallel-europarl-v7.tgz" in proc.stderr and "--offline" in proc.stderr


# ------------------------------------------------------------------------------ Multi30k



@needs_data
@binarizes
def test_multi30k_recipe_on_the_official_files(multi30k):
    out, dest = multi30k
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"train": 29000, "valid": 1014, "test": 1000, "test1": 1000, "test2": 461}
    assert len(m["inputs"]) == 10 and all(v["verified"] == "git_sha1" for v in m["inputs"].values())
    assert xz_free_first_line(out / "tmp" / "train.en") == "two young , white males are outside near many bushes ."
    assert xz_free_first_line(out / "tmp" / "test.de") == "ein mann mit einem orangefarbenen hut , der etwas anstarrt ."
    assert "@@ " in (out / "train.de").read_text(encoding="utf-8")
    assert (dest / "train.de-en.de.bin").is_file() and (dest / "test.de-en.en.idx").is_file()
    assert (dest / "test1.de-en.en.idx").is_file() and (dest / "test2.de-en.de.bin").is_file()
    # the official files' own text is kept for sacreBLEU/chrF, line-aligned with each prepared test set
    assert m["raw_references"]["counts"] == {"test.de": 1000, "test.en": 1000, "test1.de": 1000, "test1.en": 1000,
                                             "test2.de": 461, "test2.en": 461}
    for split, stem in (("test", "test_2016_flickr"), ("test1", "test_2017_flickr"), ("test2", "test_2017_mscoco")):
        with gzip.open(MULTI30K / f"{stem}.en.gz", "rt", encoding="utf-8") as f:
            assert (out / "raw" / f"{split}.en").read_text(encoding="utf-8").splitlines() == f.read().splitlines()
        assert_aligned((out / "raw" / f"{split}.en").read_text(encoding="utf-8").splitlines(),
                       (out / "tmp" / f"{split}.en").read_text(encoding="utf-8").splitlines())
    again = run_script("-m", "labo_fairseq", "prepare", "multi30k.de-en", "--source", MULTI30K, "--offline",
                       "--out", out, "--dest", dest)
    assert again.returncode == 0 and "already" in (again.stdout + again.stderr).lower()


def assert_aligned(raw, tokenized, lang="en"):
    """Line i of the raw text is line i of the prepared one: same count, and the words of a sample of
    lines agree once both are lowercased and stripped of punctuation and Moses escapes."""
    import html

    assert len(raw) == len(tokenized)

    def words(line):
        return re.findall(r"\w+", html.unescape(line.replace("@-@", "-")).lower())

    for i in range(0, len(raw), max(1, len(raw) // 50)):
        assert words(raw[i]) == words(tokenized[i]), (i, raw[i], tokenized[i])


def test_a_raw_reference_of_another_length_stops_prepare(tmp_path):
    from labo_fairseq.study.prepare.common import check_raw, keep_raw
    from labo_fairseq.study.prepare.pipeline import PrepareError

    keep_raw(tmp_path, "test", "en", ["a", "b"])
    write(tmp_path / "test.en", ["a", "b", "c"])
    with pytest.raises(PrepareError, match=r"raw/test.en: 2 lines but the prepared test set .*test.en has 3"):
        check_raw(tmp_path, ("test",), ("en",))


def xz_free_first_line(path):
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\n")
@needs_data
def test_multi30k_file_with_the_right_name_but_other_content_is_rejected(tmp_path):
    d = tmp_path / "multi30k"
    d.mkdir()
    (d / "train.de.gz").write_bytes((MULTI30K / "val.de.gz").read_bytes())  # a wrong file named right
    sources = Sources([d], cache=tmp_path / "cache", offline=True)
    with pytest.raises(SourceError, match=r"train.de.gz: git_sha1 0907cab7\S+ does not match the published "
                                          r"3869154c\S+ of multi30k/train.de.gz"):
        sources.lines(multi30k.multi30k_file("train", "de"), "")
