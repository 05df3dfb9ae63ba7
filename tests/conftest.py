"""Session fixtures: a small real data-bin and a tiny checkpoint trained on it (built once, shared by
pytest-xdist's workers); plain helpers live in :mod:`tests.helpers`."""

import os

# Before torch is imported, here or in a subprocess: the tests' models are tiny, so a second
# intra-op thread mostly spins, and the test command runs one pytest-xdist worker per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import fcntl
import lzma
import shutil
import tarfile

import pytest

from tests.helpers import IWSLT, IWSLT17, MULTI30K, MULTI30K_SMALL, TINY, cli, fairseq, talk_text, write

# Fixtures that run fairseq: every test using one is in the slow tier.
FAIRSEQ_FIXTURES = {"data_bin", "tiny_checkpoint", "tiny_checkpoint_early", "iwslt17_standin", "multi30k",
                    "multi30k_small"}


# The modules of the longest tests (minutes each), started first so that pytest-xdist's workers
# end together: the short tests fill in at the end instead of one long test running alone.
LONGEST_FIRST = ("test_compare.py", "test_gpu_allocation.py", "test_sweep.py", "test_distillation_end_to_end.py",
                 "test_pipeline.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if FAIRSEQ_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), item.get_closest_marker("slow") is None))


def built_once(tmp_path_factory, name, build):
    """``build(d)`` into a new directory ``d``, once per test run: under pytest-xdist every worker gets
    the one the first built (behind a lock beside the workers' temporary directories). Returns ``d``."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        d = tmp_path_factory.mktemp(name)
        build(d)
        return d
    shared = tmp_path_factory.getbasetemp().parent
    d, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():  # a worker whose build failed left no .done: built again from scratch
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            build(d)
            done.touch()
    return d


@pytest.fixture(scope="session")
def small_text(tmp_path_factory):
    """fairseq's tokenized+BPE'd IWSLT'14 text: 2,000 valid lines as training data, then 100 test
    lines for validation and 50 for test."""
    if not IWSLT.is_dir():
        pytest.skip(f"real data not found at {IWSLT} (set LABO_SHARED_DATA)")
    spans = {"train": (0, 2000, "valid"), "valid": (0, 100, "test"), "test": (100, 150, "test")}

    def build(root):
        for split, (lo, hi, source) in spans.items():
            for lang in ("de", "en"):
                with lzma.open(IWSLT / f"{source}.{lang}.xz", "rt", encoding="utf-8") as f:
                    lines = f.read().splitlines()[lo:hi]
                (root / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return built_once(tmp_path_factory, "iwslt14_small", build)


@pytest.fixture(scope="session")
def data_bin(small_text, tmp_path_factory):
    pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
    return built_once(tmp_path_factory, "iwslt14_small_bin", lambda dest: fairseq(
        "preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", small_text / "train",
        "--validpref", small_text / "valid", "--testpref", small_text / "test", "--destdir", dest,
        "--joined-dictionary", "--workers", "2"))


@pytest.fixture(scope="session")
def tiny_checkpoint(data_bin, tmp_path_factory):
    """A tiny transformer trained with LABO for 40 updates (warm-up 20) on the small data-bin; its
    checkpoint at update 20 is :func:`tiny_checkpoint_early`."""
    ck = built_once(tmp_path_factory, "tiny_ck", lambda ck: fairseq(
        "train", data_bin, "--user-dir", "labo_fairseq", "--task", "translation", *TINY,
        "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "20", "--max-update", "40",
        "--save-interval-updates", "20", "--save-dir", ck, "--disable-validation"))
    return ck / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint_early(tiny_checkpoint):
    """The same run at update 20: a second, different checkpoint where two systems are compared."""
    early = sorted(tiny_checkpoint.parent.glob("checkpoint_*_20.pt"))
    assert early, f"no update-20 checkpoint in {tiny_checkpoint.parent}"
    return early[0]


@pytest.fixture(scope="session")
def iwslt17_standin(tmp_path_factory):
    """``prepare_iwslt17`` on stand-in 2017-01-trnted members cut from the real tst2016 talks (train
    and valid) and the real, md5-verified 2017 evaluation archives (test = tst2017: 1,138 de-en,
    1,455 fr-en). Returns (text dir, data-bin dir, workspace), named as the recipe names them."""
    pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
    if not IWSLT17.is_dir():
        pytest.skip(f"real data not found at {IWSLT17} (set LABO_SHARED_DATA)")
    from labo_fairseq.study.prepare.iwslt17 import Iwslt17Options, prepare_iwslt17
    from labo_fairseq.study.prepare.sources import Sources
    from labo_fairseq.study.prepare.text import xml_segments

    root = tmp_path_factory.mktemp("iwslt17")
    d = root / "src"
    for src in ("de", "fr"):
        pair = f"{src}-en"
        for lang, archive in ((src, f"{src}-en"), ("en", f"en-{src}")):
            with tarfile.open(IWSLT17 / f"{archive}.tgz") as tar:
                xml = tar.extractfile(f"{archive}/IWSLT17.TED.tst2016.{archive}.{lang}.xml").read().decode()
            write(d / pair / f"train.tags.{pair}.{lang}", talk_text(list(xml_segments(xml.split("\n"))), "tst2016"))
            write(d / pair / f"IWSLT17.TED.tst2016.{pair}.{lang}.xml", xml.split("\n"))
    name = "iwslt17.de_fr-en"
    opt = Iwslt17Options(sources=Sources([d, IWSLT17], cache=root / "cache", offline=True),
                          out=root / "data" / name, dest=root / "data-bin" / name, workers=2, bpe_merges=1000,
                          valid_sets=["tst2016"], stand_in=True)
    ws = prepare_iwslt17(opt)
    return opt.out, opt.dest, ws


@pytest.fixture(scope="session")
def multi30k(tmp_path_factory):
    """The real Multi30k de-en prepared by ``labo-fairseq prepare`` (the official files, offline):
    (text dir, data-bin dir), named as the recipe names them."""
    pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")
    if not MULTI30K.is_dir():
        pytest.skip(f"real data not found at {MULTI30K} (set LABO_SHARED_DATA)")

    def build(root):
        proc = cli("prepare", "multi30k.de-en", "--source", MULTI30K, "--offline", "--root", root, "--workers", 2)
        assert proc.returncode == 0, proc.stderr[-3000:]
    root = built_once(tmp_path_factory, "multi30k", build)
    return root / "data" / "multi30k.de-en", root / "data-bin" / "multi30k.de-en"


@pytest.fixture(scope="session")
def multi30k_small(multi30k, tmp_path_factory):
    """:func:`multi30k` cut to the first lines of each split (``MULTI30K_SMALL``; raw references cut
    alike) and binarized with the full data's dictionary: the dataset of the sweep and compare tests.
    Returns the root holding ``data/multi30k.de-en`` and ``data-bin/multi30k.de-en``."""
    text, full_bin = multi30k

    def build(root):
        out, dest = root / "data" / text.name, root / "data-bin" / text.name
        for split, n in MULTI30K_SMALL.items():
            for lang in ("de", "en"):
                # BPE'd text, tokenized text (the frequency analysis counts its words), raw references
                names = [f"{split}.{lang}", f"tmp/{split}.{lang}"] + ([f"raw/{split}.{lang}"] if split.startswith("test") else [])
                for name in names:
                    lines = (text / name).read_text(encoding="utf-8").splitlines()[:n]
                    write(out / name, lines)
        dictionary = full_bin / "dict.de.txt"
        fairseq("preprocess", "--source-lang", "de", "--target-lang", "en", "--srcdict", dictionary, "--tgtdict",
                dictionary, "--trainpref", out / "train", "--validpref", out / "valid", "--testpref",
                ",".join(str(out / t) for t in ("test", "test1", "test2")), "--destdir", dest, "--workers", "2")
    return built_once(tmp_path_factory, "multi30k_small", build)
