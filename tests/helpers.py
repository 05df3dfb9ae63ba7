"""Shared test helpers: where the real data is, fairseq's command-line tools, log parsing, file writing."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from labo_fairseq.study.protocol import tiny_model

REPO = Path(__file__).resolve().parents[1]
# the test-data directory (real dev/test text, Multi30k): LABO_SHARED_DATA, else shared/data beside the checkout
SHARED = Path(os.environ.get("LABO_SHARED_DATA", REPO.parent / "shared" / "data"))
IWSLT = SHARED / "iwslt14.de-en" / "fairseq-tokenized"
IWSLT17 = SHARED / "iwslt17" / "2017-01-ted-test"
MULTI30K = SHARED / "multi30k" / "task1" / "raw"
# Lines per split of the multi30k_small fixture: enough to train a tiny model, few enough to decode in seconds.
MULTI30K_SMALL = {"train": 2000, "valid": 100, "test": 100, "test1": 100, "test2": 50}

TINY = [*tiny_model(), *("--share-all-embeddings --optimizer adam --lr 2e-3 --max-tokens 1000 --log-format json --log-interval 1 "
        "--cpu --seed 1 --no-epoch-checkpoints --num-workers 0").split()]


def fairseq(tool, *args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq {tool} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def cli(*args, cwd=None, timeout=900):
    """``labo-fairseq ARGS`` (as ``python -m labo_fairseq``) of this checkout, run in ``cwd``, with
    the interpreter's own bin folder off PATH: an environment that is not activated, as a cluster
    job or CI runs it, must still find fairseq's tools."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != bin_dir)
    env = dict(os.environ, PATH=path, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "labo_fairseq", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, env=env, timeout=timeout)


def command(*args) -> int:
    """``labo-fairseq ARGS`` in this process, as the command line runs it (errors one line on
    stderr): its exit status."""
    from labo_fairseq.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's errors
        return e.code


def _is_number(v):
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def train_log(proc):
    """The per-update ``train_inner`` records of a --log-format json run, by num_updates."""
    out = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"\| train_inner \| (\{.*\})", line)
        if m:
            rec = json.loads(m.group(1))
            out[int(rec["num_updates"])] = {k: float(v) for k, v in rec.items() if _is_number(v)}
    return out


def talk_text(segments, name):
    """Lines in train.tags format: the metadata lines fairseq's script filters, then the text."""
    return [f"<url>http://www.ted.com/talks/{name}</url>", "<keywords>talks, science</keywords>",
            "<talkid>42</talkid>", f"<title>{name}: a title</title>", f"<description>About {name}.</description>",
            *segments]


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def png_size(path):
    """(width, height) of a PNG that opens and verifies."""
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def write_dictionaries(directory, n_symbols, langs=("de", "en")):
    """fairseq dictionaries ``dict.LANG.txt`` of the symbols w0..w{n-1} (plus fairseq's specials)."""
    from fairseq.data import Dictionary

    vocab = Dictionary()
    for i in range(n_symbols):
        vocab.add_symbol(f"w{i}")
    for lang in langs:
        vocab.save(str(directory / f"dict.{lang}.txt"))
    return directory
