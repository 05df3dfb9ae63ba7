"""Inference calibration (Wang et al., ACL 2020): ECE of the tokens beam search outputs, beside the
teacher-forced ECE of the same model, at T = 1 and at the NLL-optimal temperature T*.

- T*: the temperature minimising teacher-forced NLL on --subset (valid), as ``analyze calibrate``.
- Teacher-forced ECE on --gen-subset at T = 1 and T*.
- Inference ECE: --gen-subset decoded with beam --beam at T = 1 and at T* (``--temperature``); each
  output token's confidence is its probability in the final hypothesis (fairseq's positional score,
  EOS left out), and it is correct if TER's alignment (shifts, then edit distance; ``ter.py``) of
  the hypothesis to the reference matches it. Tokens are the model's own units (BPE), as in the
  teacher-forced ECE; the reference is the T- line in the same units.
- Inference ECE by token frequency: hypothesis tokens ordered by their count in --train-tgt (default:
  the data-bin's dictionary counts, both languages for a joined dictionary) and cut into three equal
  parts with ``freq_splits``' splitting.
Same equal-width bins as everywhere (``calibration.py``). Writes to --out: inference_calibration.json,
reliability_{teacher_forced,inference}[_scaled].png and inference_calibration.png (the four curves).

  labo-fairseq analyze inference-calibration data-bin/multi30k.de-en --path runs/.../checkpoint_best.pt \\
      --subset valid --gen-subset test --out analysis/inference/labo
"""

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.scoring import ter
from labo_fairseq.scoring.calibration import TemperatureScan, ece_from_reliability, reliability, scan_with_t1
from labo_fairseq.study.analysis import plots


def token_labels(gen) -> Dict[str, List]:
    """Per output token (EOS left out): confidence, TER correctness, token; plus corpus TER counts."""
    conf, correct, tokens = [], [], []
    edits = ref_words = 0
    for i in sorted(gen.hypothesis):
        hyp, ref = gen.hypothesis[i].split(), gen.reference.get(i, "").split()
        scores = gen.positional_scores[i]
        if len(scores) != len(hyp) + 1:
            raise RuntimeError(f"sentence {i}: {len(scores)} positional scores for {len(hyp)} tokens + EOS "
                               "(was BPE removed?)")
        al = ter.align(hyp, ref)
        edits, ref_words = edits + al.edits, ref_words + al.ref_length
        conf += [min(2.0 ** s, 1.0) for s in scores[:-1]]  # log2 probabilities
        correct += [float(c) for c in al.correct]
        tokens += hyp
    return {"confidence": conf, "correct": correct, "tokens": tokens, "ter_edits": edits, "ref_words": ref_words}


def frequency_counts(train_tgt: Path, dictionary) -> Counter:
    if train_tgt is not None:
        with open(train_tgt, encoding="utf-8") as f:
            return Counter(tok for line in f for tok in line.split())
    return Counter({dictionary[i]: dictionary.count[i] for i in range(dictionary.nspecial, len(dictionary))})


def by_frequency(labelled: Dict[str, List], counts: Counter, n_bins: int) -> List[Dict]:
    from labo_fairseq.scoring.frequency import make_splits, split_names

    freq = [float(counts.get(t, 0)) for t in labelled["tokens"]]
    parts = make_splits(freq, 3)
    out = []
    for name, idx in zip(split_names(len(parts)), parts):
        if not idx:
            continue
        c = [labelled["confidence"][i] for i in idx]
        k = [labelled["correct"][i] for i in idx]
        rel = reliability(c, k, n_bins)
        out.append({"name": name, "tokens": len(idx), "mean_frequency": sum(freq[i] for i in idx) / len(idx),
                    "ece": ece_from_reliability(rel), "accuracy": sum(k) / len(k), "confidence": sum(c) / len(c)})
    return out


def summarise(rel: Dict, extra: Dict = None) -> Dict:
    n = sum(rel["count"])
    acc = sum(a * c for a, c in zip(rel["accuracy"], rel["count"]) if c > 0) / n if n else float("nan")
    conf = sum(m * c for m, c in zip(rel["confidence"], rel["count"]) if c > 0) / n if n else float("nan")
    return {"ece": ece_from_reliability(rel), "tokens": int(n), "accuracy": acc, "confidence": conf,
            **(extra or {}), "reliability": rel}


def plot_curves(curves: Dict[str, Dict], path: Path, title: str) -> Path:
    """Accuracy against confidence per bin (non-empty bins) for each case, and the diagonal."""
    fig, ax = plots.pyplot().subplots(figsize=plots.SIZE)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    styles = {"teacher forced": "-", "inference": "-."}
    for label, res in curves.items():
        rel = res["reliability"]
        pts = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n > 0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles["inference" if "inference" in label else "teacher forced"],
                marker="o", markersize=3, label=f"{label}: ECE {res['ece']:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return plots.save(fig, path)


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_bin", type=Path)
    ap.add_argument("--path", type=Path, required=True, help="checkpoint")
    ap.add_argument("--name", help="the model's name in the figures' titles (default: the checkpoint's file name)")
    ap.add_argument("--subset", default="valid", help="split for fitting the NLL-optimal temperature (default valid)")
    ap.add_argument("--gen-subset", default="test", help="split decoded and scored (default test)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--train-tgt", type=Path, help="training target text in the model's units, for the frequency "
                    "split (default: the data-bin dictionary's counts)")
    ap.add_argument("--n-bins", type=int, default=15, help="equal-width confidence bins (default 15)")
    ap.add_argument("--t-min", type=float, default=0.5)
    ap.add_argument("--t-max", type=float, default=3.0)
    ap.add_argument("--t-step", type=float, default=0.01, help="temperature grid (default 0.5..3.0 by 0.01)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--max-len-b", type=int,
                    help="at most this many tokens per hypothesis (fairseq-generate's --max-len-b; default 200)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", type=Path, required=True, help="output directory (JSON + PNGs)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing inference_calibration.json in --out")
    return ap


def main(argv=None, prog="labo-fairseq analyze inference-calibration") -> int:
    ap = _parser(prog)
    args = ap.parse_args(argv)
    if args.n_bins < 1 or not (0 < args.t_min < args.t_max) or args.t_step <= 0 or args.beam < 1:
        ap.error("need --n-bins >= 1, --beam >= 1, 0 < --t-min < --t-max and --t-step > 0")
    from labo_fairseq.runtime.commandline import require_inputs
    from labo_fairseq.runtime.files import write_json
    from labo_fairseq.runtime.provenance import record
    from labo_fairseq.study.analysis.loading import collect, load

    out_json = args.out / "inference_calibration.json"
    require_inputs(ap, dirs=[args.data_bin], files=[args.path, args.train_tgt], output=out_json, force=args.force)

    model, task = load(args.path, args.data_bin, args.cpu)
    fit = scan_with_t1(args.t_min, args.t_max, args.t_step, args.n_bins)
    collect(model, task, args.subset, fit, args.max_tokens, args.cpu)
    t_star = fit.result()["best_nll"]["temperature"]
    temps = sorted({1.0, t_star})
    tf = TemperatureScan(temps, args.n_bins)
    collect(model, task, args.gen_subset, tf, args.max_tokens, args.cpu)
    del model
    counts = frequency_counts(args.train_tgt, task.target_dictionary)

    result = {"checkpoint": str(args.path), "name": args.name, "data_bin": str(args.data_bin), "subset": args.subset,
              "gen_subset": args.gen_subset, "beam": args.beam, "n_bins": args.n_bins, "temperature_min_nll": t_star,
              "frequency_counts": str(args.train_tgt) if args.train_tgt else "data-bin dictionary",
              "teacher_forced": {}, "inference": {}}
    extra = [] if args.max_len_b is None else ["--max-len-b", args.max_len_b]
    for key, temp in (("t1", 1.0), ("scaled", t_star)):
        result["teacher_forced"][key] = summarise(tf.reliability_at(temps.index(temp)), {"temperature": temp})
        if key == "scaled" and temp == 1.0:  # T* = 1: nothing to decode again
            result["inference"][key] = result["inference"]["t1"]
            continue
        result["inference"][key] = _inference(args.data_bin, args.path, args.gen_subset, args.beam, temp, args.cpu,
                                              args.max_tokens, extra, args.n_bins, counts)
    args.out.mkdir(parents=True, exist_ok=True)
    result["figures"] = _figures(result, args.out, args.name or args.path.name, args.gen_subset, args.beam)
    result["provenance"] = record(prog, argv)
    write_json(out_json, result)
    for key in ("t1", "scaled"):
        tfr, inf = result["teacher_forced"][key], result["inference"][key]
        freq = ", ".join(f"{p['name']} {p['ece']:.4f}" for p in inf["by_frequency"])
        print(f"T = {tfr['temperature']:.2f}: teacher-forced ECE {tfr['ece']:.4f} ({tfr['tokens']:,} tokens); "
              f"inference ECE {inf['ece']:.4f} ({inf['tokens']:,} tokens, accuracy {inf['accuracy']:.3f}, "
              f"confidence {inf['confidence']:.3f}); by frequency: {freq}")
    print(f"wrote {out_json}")
    return 0


def _inference(data_bin: Path, path: Path, subset: str, beam: int, temp: float, cpu: bool, max_tokens: int,
               extra: List, n_bins: int, counts) -> Dict:
    """Beam search at temperature ``temp``, its tokens labelled by TER: their calibration, overall
    and by frequency."""
    from labo_fairseq.study.analysis.loading import generate

    print(f"  decoding {subset} with beam {beam} at T = {temp:.2f}", file=sys.stderr)
    gen = generate(data_bin, path, subset, beam, cpu, extra=["--temperature", temp] + extra, max_tokens=max_tokens,
                   remove_bpe=False)
    lab = token_labels(gen)
    rel = reliability(lab["confidence"], lab["correct"], n_bins)
    return summarise(rel, {
        "temperature": temp, "sentences": len(gen.hypothesis), "bleu_line": gen.bleu_line,
        "ter": lab["ter_edits"] / max(lab["ref_words"], 1), "ter_edits": lab["ter_edits"],
        "ref_tokens": lab["ref_words"], "by_frequency": by_frequency(lab, counts, n_bins)})


def _figures(result: Dict, out: Path, label: str, subset: str, beam: int) -> Dict[str, str]:
    """A reliability diagram per kind and temperature, and their curves in one figure."""
    figures = {}
    for kind in ("teacher_forced", "inference"):
        for key in ("t1", "scaled"):
            res = result[kind][key]
            name = f"reliability_{kind}{'_scaled' if key == 'scaled' else ''}"
            figures[name] = str(plots.reliability_diagram(
                res["reliability"], out / f"{name}.png",
                f"{label}: {kind.replace('_', ' ')}, {subset}, T = {res['temperature']:.2f}", res["ece"]))
    curves = {f"{kind.replace('_', ' ')}, T = {result[kind][key]['temperature']:.2f}": result[kind][key]
              for kind in ("teacher_forced", "inference") for key in ("t1", "scaled")}
    figures["curves"] = str(plot_curves(curves, out / "inference_calibration.png",
                                        f"{label} on {subset}: teacher forced vs beam {beam}"))
    return figures
