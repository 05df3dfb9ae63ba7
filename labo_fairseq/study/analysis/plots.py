"""PNG figures of the analyses (matplotlib, Agg backend: no display needed)."""

import logging
from pathlib import Path
from typing import Dict, List, Sequence

logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq/hydra may set the root logger to DEBUG

DPI = 100
SIZE = (6.4, 4.8)  # inches: 640 x 480 pixels at DPI


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: matplotlib is the optional extra
    ``plots`` (it would double the size of the offline install bundle)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the analysis figures need matplotlib: pip install 'labo-fairseq[plots]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def reliability_diagram(rel: Dict[str, List[float]], path: Path, title: str, ece: float) -> Path:
    """Accuracy per confidence bin (bars), the diagonal, the gap to each bin's mean confidence
    (shaded), and the bin counts (lower panel, log scale)."""
    edges, counts = rel["edges"], rel["count"]
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    fig, (ax, axc) = pyplot().subplots(2, 1, figsize=SIZE, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    acc = [a if c > 0 else 0.0 for a, c in zip(rel["accuracy"], counts)]
    conf = [m if c > 0 else 0.0 for m, c in zip(rel["confidence"], counts)]
    ax.bar(lefts, acc, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    filled = [i for i, c in enumerate(counts) if c > 0]
    ax.bar([lefts[i] for i in filled], [conf[i] - acc[i] for i in filled], bottom=[acc[i] for i in filled],
           width=width, align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//",
           label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}  (ECE {ece:.4f}, {int(sum(counts)):,} tokens)")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lefts, [max(c, 0) for c in counts], width=width, align="edge", color="gray", edgecolor="black")
    axc.set_yscale("symlog")
    axc.set_ylabel("tokens")
    axc.set_xlabel("confidence (max probability)")
    axc.set_xlim(0, 1)
    fig.tight_layout()
    return save(fig, path)


def curves(x: Sequence[float], series: Dict[str, Sequence[float]], path: Path, title: str, xlabel: str,
           marks: Dict[str, float] = None) -> Path:
    """One panel per series against ``x``; optional vertical marks (name -> x)."""
    fig, axes = pyplot().subplots(len(series), 1, figsize=SIZE, sharex=True, squeeze=False)
    for ax, (name, ys) in zip(axes[:, 0], series.items()):
        ax.plot(list(x), list(ys), marker="." if len(x) < 30 else None)
        ax.set_ylabel(name)
        for label, xm in (marks or {}).items():
            ax.axvline(xm, linestyle="--", color="gray", linewidth=1)
            ax.annotate(label, (xm, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right")
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    return save(fig, path)


def histograms(data: Dict[str, Dict[str, Sequence[float]]], path: Path, title: str, bins: int = 20) -> Path:
    """Figure 2 layout: one panel per split, one histogram per system, of probabilities in [0, 1]."""
    splits = list(data)
    cols = len(splits)
    fig, axes = pyplot().subplots(1, cols, figsize=(max(SIZE[0], 3.2 * cols), SIZE[1]), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        for system, values in data[split].items():
            if len(values):
                ax.hist(values, bins=bins, range=(0, 1), alpha=0.5, density=True, label=f"{system} (n={len(values):,})")
        ax.set_title(split)
        ax.set_xlabel("probability of the chosen token")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("density")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def seed_band(seeds: Dict[str, List[List[float]]]) -> Dict[str, list]:
    """Over a method's seeds (seed -> [[epoch, value], ...]): ``epochs`` every seed reached, with the
    ``mean``, ``low`` and ``high`` of their values there; a seed's last value in an epoch stands for
    it (the end-of-epoch validation, after any ``--save-interval-updates`` one)."""
    per_seed = [{epoch: value for epoch, value in rows} for rows in seeds.values()]
    epochs = sorted(set.intersection(*(set(v) for v in per_seed))) if per_seed else []
    at = [[v[e] for v in per_seed] for e in epochs]
    return {"epochs": epochs, "mean": [sum(vs) / len(vs) for vs in at], "low": [min(vs) for vs in at],
            "high": [max(vs) for vs in at]}


def validation_curves(curves: Dict[str, Dict[str, List[List[float]]]], path: Path, metric: str = "BLEU") -> Path:
    """Validation ``metric`` (higher is better) per epoch of each method: the mean over its seeds
    (line) and their range (band) at the epochs every seed reached, and each seed's own curve (thin)
    to the epoch it stopped at, so that every run's plateau shows; ``curves``: method -> seed ->
    [[epoch, value], ...] (see :func:`seed_band`)."""
    fig, ax = pyplot().subplots(figsize=SIZE)
    bests = [max(v for rows in seeds.values() for _, v in rows) for seeds in curves.values() if any(seeds.values())]
    for method, seeds in curves.items():
        band = seed_band(seeds)
        if not band["epochs"]:
            continue
        line, = ax.plot(band["epochs"], band["mean"],
                        label=f"{method} (mean of {len(seeds)}, to epoch {band['epochs'][-1]:g})")
        ax.fill_between(band["epochs"], band["low"], band["high"], color=line.get_color(), alpha=0.2)
        for rows in seeds.values():
            by_epoch = dict(rows)  # a seed's last value in an epoch, as in the band
            ax.plot(sorted(by_epoch), [by_epoch[e] for e in sorted(by_epoch)], color=line.get_color(), lw=0.6,
                    alpha=0.45)
    if bests:  # the first epochs' climb from 0 would flatten the plateaus the figure is for
        ax.set_ylim(bottom=max(0.0, min(bests) - 12.0))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("line: mean, band: range of a method's seeds, up to where its shortest run stopped;\n"
                 "thin: each seed, up to its own stop", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)
