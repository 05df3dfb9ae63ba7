"""Figure 2: histogram of the probability of the token chosen at each step of the final beam-search
hypothesis (every step, EOS included), per frequency split and per system.

  labo-fairseq analyze beam-probs data-bin/iwslt14.de-en --system LS=ckpt_ls.pt \\
      --system LABO=ckpt_labo.pt --splits analysis/freq/freq_splits.json --out analysis/beam

The probabilities are fairseq-generate's positional scores (log2) of the final hypotheses,
decoded with --beam (default 5) through the plugin, so every sentence is translated.
"""

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.study.analysis import plots


def summary(values: Sequence[float], bins: int = 20) -> Dict:
    if not values:
        return {"steps": 0}
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    mode = max(range(bins), key=counts.__getitem__)
    return {"steps": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "mode_bin": [mode / bins, (mode + 1) / bins], "histogram": counts}


def step_probabilities(positional_scores: Dict[int, List[float]], ids: Sequence[int]) -> List[float]:
    return [2.0 ** s for i in ids for s in positional_scores.get(i, [])]


def main(argv=None, prog="labo-fairseq analyze beam-probs") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_bin", type=Path)
    ap.add_argument("--system", action="append", required=True, metavar="NAME=CHECKPOINT", help="repeatable")
    ap.add_argument("--subset", default="test")
    ap.add_argument("--splits", type=Path, help="freq_splits.json of the same subset (default: one split, all)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--bins", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--source-lang", help="decoding direction (needed for a multilingual model; default: the data's)")
    ap.add_argument("--target-lang")
    ap.add_argument("--out", type=Path, required=True, help="output directory (beam_probs.json, beam_probs.png)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    from labo_fairseq.runtime.commandline import require_inputs
    from labo_fairseq.runtime.files import read_json, write_json
    from labo_fairseq.runtime.provenance import record
    from labo_fairseq.study.analysis.loading import generate

    out_json = args.out / "beam_probs.json"
    require_inputs(ap, dirs=[args.data_bin], files=[args.splits], output=out_json, force=args.force)
    systems = {}
    for spec in args.system:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            ap.error(f"--system {spec}: expected NAME=CHECKPOINT with an existing file")
        systems[name] = Path(path)

    gens = {}
    for name, ckpt in systems.items():
        print(f"  decoding {args.subset} with {name} (beam {args.beam})", file=sys.stderr)
        gens[name] = generate(args.data_bin, ckpt, args.subset, args.beam, args.cpu, max_tokens=args.max_tokens,
                              source_lang=args.source_lang, target_lang=args.target_lang)
    n = len(next(iter(gens.values())).positional_scores)
    if args.splits:
        splits = {s["name"]: s["ids"] for s in read_json(args.splits)["splits"]}
        if max(max(ids) for ids in splits.values()) >= n:
            ap.error(f"--splits refers to sentence ids beyond the {n} sentences of {args.subset}")
    else:
        splits = {f"all ({args.subset})": list(range(n))}
    data = {split: {name: step_probabilities(g.positional_scores, ids) for name, g in gens.items()}
            for split, ids in splits.items()}
    stats = {split: {name: summary(v, args.bins) for name, v in per.items()} for split, per in data.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    png = plots.histograms(data, args.out / "beam_probs.png", f"probability of the chosen token, beam {args.beam}",
                           bins=args.bins)
    write_json(out_json, {"data_bin": str(args.data_bin), "subset": args.subset, "beam": args.beam,
                          "systems": {k: str(v) for k, v in systems.items()},
                          "bleu": {k: g.bleu_line for k, g in gens.items()},
                          "stats": stats, "figure": str(png), "provenance": record(prog, argv)})
    for split, per in stats.items():
        for name, st in per.items():
            if st["steps"]:
                print(f"{split} | {name}: {st['steps']:,} steps, mean {st['mean']:.3f}, median {st['median']:.3f}, "
                      f"mode bin {st['mode_bin'][0]:.2f}-{st['mode_bin'][1]:.2f}")
    print(f"wrote {out_json}")
    return 0
