"""Calibration of a checkpoint's next-token predictions under teacher forcing (Müller et al., 2019).

Writes to --out: calibration.json, reliability.png (T = 1), reliability_scaled.png (the NLL-optimal
temperature), temperature.png (validation NLL and ECE against T) and, with --bleu-temperatures,
bleu_temperature.png (BLEU of beam search against the decoding temperature).

  labo-fairseq analyze calibrate data-bin/iwslt14.de-en --path checkpoints/labo/checkpoint_best.pt \\
      --subset valid --out analysis/labo --bleu-temperatures 0.8 1.0 1.2 1.5
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.scoring.calibration import ece_from_reliability, scan_with_t1
from labo_fairseq.study.analysis import plots


def bleu_of(gen) -> float:
    m = re.search(r"BLEU4? = ([\d.]+)", gen.bleu_line or "")
    if not m:
        raise RuntimeError(f"no BLEU in fairseq-generate's output: {gen.bleu_line!r}")
    return float(m.group(1))


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_bin", type=Path)
    ap.add_argument("--path", type=Path, required=True, help="checkpoint")
    ap.add_argument("--subset", default="valid", help="split for teacher forcing and temperature fitting (default valid)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (JSON + PNGs)")
    ap.add_argument("--n-bins", type=int, default=15, help="equal-width confidence bins (default 15)")
    ap.add_argument("--t-min", type=float, default=0.5)
    ap.add_argument("--t-max", type=float, default=3.0)
    ap.add_argument("--t-step", type=float, default=0.01, help="temperature grid (default 0.5..3.0 by 0.01)")
    ap.add_argument("--bleu-temperatures", type=float, nargs="*", default=[],
                    help="decoding temperatures for the BLEU-vs-temperature curve (beam search)")
    ap.add_argument("--gen-subset", default="test", help="split decoded for the BLEU curve (default test)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--source-lang", help="decoding direction (needed for a multilingual model; default: the data's)")
    ap.add_argument("--target-lang")
    ap.add_argument("--force", action="store_true", help="overwrite an existing calibration.json in --out")
    return ap


def main(argv=None, prog="labo-fairseq analyze calibrate") -> int:
    ap = _parser(prog)
    args = ap.parse_args(argv)
    if args.n_bins < 1 or not (0 < args.t_min < args.t_max) or args.t_step <= 0:
        ap.error("need --n-bins >= 1 and 0 < --t-min < --t-max, --t-step > 0")
    if any(t <= 0 for t in args.bleu_temperatures):
        ap.error("--bleu-temperatures must be positive")
    from labo_fairseq.runtime.commandline import require_inputs
    from labo_fairseq.runtime.files import write_json
    from labo_fairseq.runtime.provenance import record
    from labo_fairseq.study.analysis.loading import collect, load

    out_json = args.out / "calibration.json"
    require_inputs(ap, dirs=[args.data_bin], files=[args.path], output=out_json, force=args.force)

    model, task = load(args.path, args.data_bin, args.cpu)
    scan = scan_with_t1(args.t_min, args.t_max, args.t_step, args.n_bins)
    collect(model, task, args.subset, scan, args.max_tokens, args.cpu)
    res = scan.result()
    args.out.mkdir(parents=True, exist_ok=True)
    figures, rel_one, rel_best = _figures(scan, res, args.out, args.subset)
    bleu_curve = [_bleu_at(args.data_bin, args.path, args.gen_subset, args.beam, t, args.cpu, args.max_tokens,
                           args.source_lang, args.target_lang) for t in args.bleu_temperatures]
    if bleu_curve:
        figures["bleu_temperature"] = str(plots.curves(
            [b["temperature"] for b in bleu_curve], {"BLEU": [b["bleu"] for b in bleu_curve]},
            args.out / "bleu_temperature.png", f"beam {args.beam} on {args.gen_subset}", "decoding temperature"))
    summary = {
        "checkpoint": str(args.path), "data_bin": str(args.data_bin), "subset": args.subset,
        "ece": res["t1"]["ece"], "nll": res["t1"]["nll"],
        "temperature_min_nll": res["best_nll"], "temperature_min_ece": res["best_ece"],
        "ece_after_scaling": res["best_nll"]["ece"], "tokens": res["tokens"], "n_bins": args.n_bins,
        "reliability": rel_one, "reliability_scaled": rel_best, "temperature_curve": res["curve"],
        "bleu_vs_temperature": bleu_curve, "figures": figures, "provenance": record(prog, argv),
    }
    write_json(out_json, summary)
    print(f"ECE {res['t1']['ece']:.4f} (T=1), NLL {res['t1']['nll']:.4f}; T*={res['best_nll']['temperature']:.2f} "
          f"(min NLL) -> ECE {res['best_nll']['ece']:.4f}; min-ECE T={res['best_ece']['temperature']:.2f} "
          f"-> ECE {res['best_ece']['ece']:.4f}; {res['tokens']:,} tokens; wrote {out_json}")
    return 0


def _figures(scan, res: Dict, out: Path, subset: str) -> Tuple[Dict[str, str], Dict, Dict]:
    """The reliability diagrams at T = 1 and at the NLL-optimal T, and the temperature curves:
    (the figures' paths, the two diagrams' data)."""
    grid = list(scan.temperatures)
    i_one, i_best = grid.index(1.0), grid.index(res["best_nll"]["temperature"])
    rel_one, rel_best = scan.reliability_at(i_one), scan.reliability_at(i_best)
    figures = {
        "reliability": str(plots.reliability_diagram(rel_one, out / "reliability.png",
                                                     f"{subset}, T = 1", ece_from_reliability(rel_one))),
        "reliability_scaled": str(plots.reliability_diagram(
            rel_best, out / "reliability_scaled.png", f"{subset}, T = {grid[i_best]:.2f} (min NLL)",
            ece_from_reliability(rel_best))),
        "temperature": str(plots.curves(grid, {"NLL (nats/token)": res["curve"]["nll"], "ECE": res["curve"]["ece"]},
                                        out / "temperature.png", f"temperature scaling on {subset}",
                                        "temperature T", {"min NLL": res["best_nll"]["temperature"],
                                                          "min ECE": res["best_ece"]["temperature"]})),
    }
    return figures, rel_one, rel_best


def _bleu_at(data_bin: Path, path: Path, subset: str, beam: int, temp: float, cpu: bool, max_tokens: int,
             source_lang: Optional[str], target_lang: Optional[str]) -> Dict:
    """BLEU of beam search at decoding temperature ``temp``."""
    from labo_fairseq.study.analysis.loading import generate

    print(f"  decoding {subset} with beam {beam} at T = {temp}", file=sys.stderr)
    gen = generate(data_bin, path, subset, beam, cpu, extra=["--temperature", temp], max_tokens=max_tokens,
                   source_lang=source_lang, target_lang=target_lang)
    return {"temperature": temp, "bleu": bleu_of(gen), "bleu_line": gen.bleu_line, "sentences": len(gen.hypothesis)}
