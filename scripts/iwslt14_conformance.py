#!/usr/bin/env python
"""How closely our IWSLT'14 preparation reproduces fairseq's prepare-iwslt14.sh (perl Moses + subword-nmt).

Runs the pipeline's own reader and tokenizer (labo_fairseq.study.prepare) on the raw IWSLT'14 de-en dev/test
XML files and compares, line by line, with fairseq's output of the same files:
  tok.*  our tokenized + lowercased test set   vs  fairseq-tokenized/tmp/test.*
  bpe.*  fairseq's tmp/test.* with BPE applied by our code using fairseq's `code`  vs  fairseq-tokenized/test.*
The test-data directory holds no training text, so learning the BPE codes cannot be compared; as an extra
check on training-side text, fairseq's tmp/valid.* (every 23rd training line) is also BPE'd and compared.
The last line reads: identical lines: tok.de=...% tok.en=...% bpe.de=...% bpe.en=...%
"""

import argparse
import lzma
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labo_fairseq.study.prepare.common import _BpeFactory
from labo_fairseq.study.prepare.iwslt14 import iwslt14_test_sets
from labo_fairseq.study.prepare.text import MosesTokenizer, xml_segments


def read_xz(path: Path):
    with lzma.open(path, "rt", encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")[:-1]


def compare(name, ours, ref, show):
    if len(ours) != len(ref):
        print(f"{name}: {len(ours)} lines vs {len(ref)} in fairseq's output")
    same = sum(a == b for a, b in zip(ours, ref))
    pct = 100.0 * same / max(len(ref), 1)
    print(f"{name}: {same}/{len(ref)} identical ({pct:.2f}%)")
    for a, b in [(a, b) for a, b in zip(ours, ref) if a != b][:show]:
        print(f"  ours:    {a}\n  fairseq: {b}")
    return pct


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the shared data directory (holds iwslt14.de-en/)")
    ap.add_argument("--show", type=int, default=3, help="differing lines to print per comparison")
    args = ap.parse_args(argv)
    root = args.data / "iwslt14.de-en"
    orig, fs = root / "orig" / "de-en", root / "fairseq-tokenized"
    missing = [p for p in (orig, fs / "code.xz", fs / "tmp" / "test.de.xz") if not p.exists()]
    if missing:
        ap.error(f"expected IWSLT'14 files are missing: {', '.join(map(str, missing))}")
    bpe = _BpeFactory(str(_unpacked_code(fs / "code.xz")))()
    result = {}
    for lang in ("de", "en"):
        tok = MosesTokenizer(lang)
        ours = []
        for s in iwslt14_test_sets("de"):
            ours += [tok(line).lower() for line in xml_segments(read_xz(orig / f"{s}.de-en.{lang}.xml.xz"))]
        result[f"tok.{lang}"] = compare(f"tok.{lang}", ours, read_xz(fs / "tmp" / f"test.{lang}.xz"), args.show)
        fairseq_tok = read_xz(fs / "tmp" / f"test.{lang}.xz")
        result[f"bpe.{lang}"] = compare(f"bpe.{lang}", [bpe(x) for x in fairseq_tok], read_xz(fs / f"test.{lang}.xz"), args.show)
        compare(f"bpe.valid.{lang} (training-side text)", [bpe(x) for x in read_xz(fs / "tmp" / f"valid.{lang}.xz")],
                read_xz(fs / f"valid.{lang}.xz"), args.show)
    print("identical lines: " + " ".join(f"{k}={result[k]:.2f}%" for k in ("tok.de", "tok.en", "bpe.de", "bpe.en")))
    return 0


def _unpacked_code(path: Path) -> Path:
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="iwslt14_code_")) / "code"
    out.write_text("\n".join(read_xz(path)) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(main())
