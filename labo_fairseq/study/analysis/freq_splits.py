"""Table 4: BLEU on splits of a test/valid set by the source sentence's average training-token frequency.

Frequency score of a source sentence (Raunak et al., 2020): the mean, over its tokens, of each token's
count in the training source text. Sentences are ordered from most to least frequent and cut into
parts: ``--split-size N`` takes N sentences per part from the top (the last part may be shorter; the
paper uses 3 parts of 2,400 for IWSLT'14 de-en), otherwise ``--parts K`` equal parts. Use the same
tokenization (e.g. BPE'd text) for --train-src and --src.

  labo-fairseq analyze freq-splits --train-src data/iwslt14.de-en/train.de \\
      --src data/iwslt14.de-en/test.de --ref ref.en --system LS=ls.hyp --system LABO=labo.hyp \\
      --tokenize none --split-size 2400 --out analysis/freq

Systems are plain hypothesis files (one line per source line) or fairseq-generate outputs (their
H- lines, BPE removed, are used, ordered by sentence id; --ref may then be omitted: the T- lines are used).
"""

import argparse
from pathlib import Path
from typing import Dict, List, Tuple

import sacrebleu

from labo_fairseq.runtime.commandline import ArgumentParser, require_inputs
from labo_fairseq.runtime.files import write_json
from labo_fairseq.runtime.provenance import record
from labo_fairseq.scoring.frequency import frequency_scores, make_splits, split_names
from labo_fairseq.study.fairseq_tools import parse_generate


def read_system(path: Path) -> Tuple[List[str], List[str]]:
    """(hypotheses, references-or-empty) from a plain file or a fairseq-generate output."""
    text = path.read_text(encoding="utf-8")
    if any(line.startswith("H-") for line in text.splitlines()[:200]):
        gen = parse_generate(text)
        return gen.ordered(gen.hypothesis), gen.ordered(gen.reference)
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), []


def bleu_table(splits: List[List[int]], systems: Dict[str, List[str]], refs: List[str], tokenize: str) -> Dict:
    table = {}
    for name, hyps in systems.items():
        row = []
        for idx in splits:
            # force: with --tokenize none the text is pre-tokenized on purpose (no "forgot to detokenize" warning)
            b = sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]], tokenize=tokenize,
                                      force=tokenize == "none")
            row.append(b.score)
        table[name] = row
    return table


def main(argv=None, prog="labo-fairseq analyze freq-splits") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-src", type=Path, required=True, help="training source text (token counts)")
    ap.add_argument("--src", type=Path, required=True, help="source side of the evaluated set, same tokenization")
    ap.add_argument("--ref", type=Path, help="reference file (default: T- lines of the first fairseq-generate output)")
    ap.add_argument("--system", action="append", required=True, metavar="NAME=FILE",
                    help="hypotheses of a system (repeatable); the first is the baseline of the delta row")
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--split-size", type=int, default=0, help="sentences per part (default: equal parts)")
    ap.add_argument("--tokenize", default="13a", help="sacrebleu tokenizer ('none' for pre-tokenized text)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (freq_splits.json)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if args.parts < 1 or args.split_size < 0:
        ap.error("--parts must be >= 1 and --split-size >= 0")
    out_json = args.out / "freq_splits.json"
    require_inputs(ap, files=[args.train_src, args.src, args.ref], output=out_json, force=args.force)
    src = args.src.read_text(encoding="utf-8").splitlines()
    systems, refs = {}, []
    for spec in args.system:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            ap.error(f"--system {spec}: expected NAME=FILE with an existing file")
        hyps, sys_refs = read_system(Path(path))
        if len(hyps) != len(src):
            ap.error(f"--system {name}: {len(hyps)} hypotheses for {len(src)} source lines")
        systems[name] = hyps
        refs = refs or sys_refs
    if args.ref:
        refs = args.ref.read_text(encoding="utf-8").splitlines()
    if len(refs) != len(src):
        ap.error(f"{len(refs)} references for {len(src)} source lines (give --ref)")
    scores = frequency_scores(src, args.train_src.read_text(encoding="utf-8").splitlines())
    splits = make_splits(scores, args.parts, args.split_size)
    names = split_names(len(splits))
    table = bleu_table(splits, systems, refs, args.tokenize)
    base = next(iter(table))
    result = {
        "src": str(args.src), "train_src": str(args.train_src), "tokenize": args.tokenize,
        "splits": [{"name": n, "size": len(idx), "mean_frequency": sum(scores[i] for i in idx) / max(len(idx), 1),
                    "ids": idx} for n, idx in zip(names, splits)],
        "bleu": table, "delta_vs": base,
        "delta": {k: [a - b for a, b in zip(v, table[base])] for k, v in table.items() if k != base},
        "provenance": record(prog, argv, with_hardware=False),
    }
    write_json(out_json, result)
    print("| system | " + " | ".join(f"{n} ({len(i)})" for n, i in zip(names, splits)) + " |")
    print("|---" * (len(splits) + 1) + "|")
    for k, row in table.items():
        print(f"| {k} | " + " | ".join(f"{b:.2f}" for b in row) + " |")
    for k, row in result["delta"].items():
        print(f"| Δ {k} − {base} | " + " | ".join(f"{d:+.2f}" for d in row) + " |")
    print(f"wrote {out_json}")
    return 0
