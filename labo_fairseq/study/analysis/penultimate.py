"""The penultimate-layer picture of Müller et al. (2019, §2, Fig. 1) for a translation model.

Logit k is ``x·w_k`` (x: the decoder features fed to the output projection; w_k: row k of the output
embedding, the class *template*). Under teacher forcing on --subset, x is collected at every target
position whose gold token is one of three tokens, and projected onto the plane through their
templates: origin w_1, orthonormal basis by Gram–Schmidt on w_2 − w_1 and w_3 − w_1, coordinates
of x − w_1. Label smoothing should give tight clusters at equal distances (regular triangles).

Two rows of panels, one panel per model: three frequent tokens (--tokens, default the most frequent
content tokens of the subset's targets), and two close tokens plus an unrelated one (--similar,
default: the pair of frequent content tokens whose output embeddings are most similar on average
over the models, and the frequent token least similar to both). Numbers, so the claim does not rest
on the picture (penultimate.json), per class and both in the full feature space and in the plane:
the mean distance to the own template, the within-class spread (RMS distance to the class mean), the
distances between class means, and ``ratio`` = mean distance between class means / mean spread.

  labo-fairseq analyze penultimate data-bin/multi30k.de-en --system CE=runs/ce.pt --system LS=runs/ls.pt \\
      --system LABO=runs/labo.pt --subset valid --out analysis/penultimate
"""

import argparse
import itertools
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.errors import UsageError

# Function words of the target languages of the configs, not "content" tokens (words that are also
# English content words, as German "man" and "war", are left out).
STOPWORDS = set("""
a an the and or but of to in on at by for from with without into onto over under up down out off about as is
are was were be been being am has have had do does did it its it's this that these those there here he she
they we you i me him her them us my your his our their who whom whose which what when where why how not no
yes so than then too very can could will would shall should may might must just also only some any all each
both few more most other such own same one two while near next
der die das den dem des ein eine einer einem einen eines und oder aber mit von zu im in am an auf aus bei
für ist sind waren wird werden hat haben sich nicht es er sie wir ihr ich du vor nach über unter
le la les un une des du de et ou mais avec dans sur pour par est sont il elle ils elles nous vous je au aux
""".split())


def plane_basis(templates: Tensor) -> Tuple[Tensor, Tensor]:
    """(origin w_1, basis 2 x d with orthonormal rows) of the plane through the 3 rows of ``templates``."""
    w = templates.double()
    if w.shape[0] != 3:
        raise ValueError(f"need 3 templates, got {w.shape[0]}")
    u = w[1] - w[0]
    v = w[2] - w[0]
    e1 = u / u.norm()
    v = v - (v @ e1) * e1
    if v.norm() <= 1e-9 * max(float(u.norm()), 1.0):
        raise ValueError("the three templates are collinear: no plane through them")
    return w[0], torch.stack([e1, v / v.norm()])


def project(x: Tensor, origin: Tensor, basis: Tensor) -> Tensor:
    """Coordinates (n x 2) of ``x - origin`` in the plane's basis."""
    return (x.double() - origin) @ basis.T


def cluster_stats(x: Tensor, labels: Tensor, templates: Tensor, names: Sequence[str]) -> Dict:
    """Per class (``labels`` in 0..2): mean ‖x − w_c‖, spread sqrt(mean ‖x − μ_c‖²); the distances
    between class means and between templates; ratio = mean distance between means / mean spread.
    ``x`` and ``templates`` in the same space (d-dimensional, or the plane's 2-D coordinates)."""
    x, templates = x.double(), templates.double()
    classes, means, spreads = {}, {}, []
    for c, name in enumerate(names):
        xc = x[labels == c]
        if len(xc) == 0:
            raise ValueError(f"no examples of {name!r}")
        mu = xc.mean(0)
        spread = float(((xc - mu) ** 2).sum(-1).mean().sqrt())
        classes[name] = {"count": len(xc), "mean_distance_to_template": float((xc - templates[c]).norm(dim=-1).mean()),
                         "spread": spread}
        means[name] = mu
        spreads.append(spread)
    between = {f"{a}-{b}": float((means[a] - means[b]).norm()) for a, b in itertools.combinations(names, 2)}
    tmpl = {f"{names[a]}-{names[b]}": float((templates[a] - templates[b]).norm())
            for a, b in itertools.combinations(range(len(names)), 2)}
    mean_between = sum(between.values()) / len(between)
    mean_spread = sum(spreads) / len(spreads)
    return {"classes": classes, "distance_between_means": between, "distance_between_templates": tmpl,
            "mean_distance_between_means": mean_between, "mean_spread": mean_spread,
            "ratio": mean_between / mean_spread if mean_spread > 0 else float("inf"),
            "equidistance": min(between.values()) / max(between.values()) if max(between.values()) > 0 else 1.0}


def output_embedding(model) -> Tensor:
    proj = getattr(model.decoder, "output_projection", None)
    if proj is None or getattr(proj, "bias", None) is not None:
        raise UsageError("the decoder has no bias-free output projection (adaptive softmax?); "
                         "the picture needs logits = x·w_k")
    return proj.weight.detach()


def target_counts(task, subset: str) -> Tuple[Counter, Counter]:
    """(occurrences, occurrences that continue a BPE word: after a token ending in "@@") per target id."""
    task.load_dataset(subset)
    ds, d = task.dataset(subset), task.target_dictionary
    joins = torch.tensor([d[i].endswith("@@") for i in range(len(d))])
    counts, inside = Counter(), Counter()
    for i in range(len(ds)):
        t = ds.tgt[i]
        counts.update(t.tolist())
        inside.update(t[1:][joins[t[:-1]]].tolist())
    return counts, inside


def content_tokens(counts: Counter, dictionary, k: int, inside: Counter = None) -> List[str]:
    """The ``k`` most frequent alphabetic target tokens of 3+ letters that are not function words and
    are whole words (no "@@", and mostly not the end of a BPE-split word, per ``inside``)."""
    inside = inside or Counter()
    out = []
    for idx, n in counts.most_common():
        if idx < dictionary.nspecial:
            continue
        sym = dictionary[idx]
        if sym.endswith("@@") or not sym.isalpha() or len(sym) < 3 or sym.lower() in STOPWORDS:
            continue
        if inside[idx] * 2 > n:
            continue
        out.append(sym)
        if len(out) == k:
            break
    return out


def similar_triple(candidates: Sequence[str], embeddings: List[Tuple[object, Tensor]]) -> List[str]:
    """[a, b, c]: the candidate pair with the highest output-embedding cosine (mean over models), and
    the candidate with the lowest maximal cosine to either."""
    def cos(a, b):
        vals = []
        for d, w in embeddings:
            wa, wb = w[d.index(a)].double(), w[d.index(b)].double()
            vals.append(float(wa @ wb / (wa.norm() * wb.norm())))
        return sum(vals) / len(vals)

    a, b = max(itertools.combinations(candidates, 2), key=lambda p: cos(*p))
    c = min((t for t in candidates if t not in (a, b)), key=lambda t: max(cos(t, a), cos(t, b)))
    return [a, b, c]


def collect(model, task, subset: str, token_ids: Sequence[int], max_tokens: int, cpu: bool) -> Tuple[Tensor, Tensor]:
    """(features n x d, labels n): decoder features under teacher forcing where the gold token is one
    of ``token_ids`` (label = its index in ``token_ids``)."""
    from labo_fairseq.study.analysis.loading import batches

    ids = torch.tensor(list(token_ids))
    feats, labels = [], []
    with torch.no_grad():
        for sample in batches(model, task, subset, max_tokens, cpu, desc=f"teacher forcing on {subset}"):
            x = model(**sample["net_input"], features_only=True)[0]
            tgt = sample["target"].cpu()
            hit = (tgt.unsqueeze(-1) == ids).nonzero()  # (batch, pos, which)
            if len(hit):
                feats.append(x[hit[:, 0].to(x.device), hit[:, 1].to(x.device)].double().cpu())
                labels.append(hit[:, 2])
    if not feats:
        return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def analyse(x: Tensor, labels: Tensor, w: Tensor, names: Sequence[str]) -> Dict:
    origin, basis = plane_basis(w)
    xy, wxy = project(x, origin, basis), project(w, origin, basis)
    return {"full": cluster_stats(x, labels, w, names), "plane": cluster_stats(xy, labels, wxy, names),
            "templates_plane": wxy.tolist(), "_xy": xy, "_labels": labels}


def plot(rows: Dict[str, Dict], systems: Sequence[str], path: Path, max_points: int, seed: int = 1) -> Path:
    from labo_fairseq.study.analysis.plots import pyplot, save

    plt = pyplot()

    fig, axes = plt.subplots(len(rows), len(systems), figsize=(3.4 * len(systems), 3.4 * len(rows)), squeeze=False)
    gen = torch.Generator().manual_seed(seed)
    colours = ["tab:blue", "tab:orange", "tab:green"]
    for r, (mode, row) in enumerate(rows.items()):
        for c, name in enumerate(systems):
            ax, res = axes[r, c], row["models"][name]
            xy, lab = res["_xy"], res["_labels"]
            for k, tok in enumerate(row["tokens"]):
                pts = xy[lab == k]
                if len(pts) > max_points:  # same subsample size per class so no class hides the others
                    pts = pts[torch.randperm(len(pts), generator=gen)[:max_points]]
                ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.4, color=colours[k], label=f"{tok} ({int((lab == k).sum())})")
                tx, ty = res["templates_plane"][k]
                ax.scatter([tx], [ty], marker="*", s=160, color=colours[k], edgecolor="black", zorder=3)
            ax.set_title(f"{name}: ratio {res['full']['ratio']:.2f}", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel(mode, fontsize=9)
            ax.legend(fontsize=7, loc="best", markerscale=3)
    sep = " " if len(systems) >= 3 else "\n"  # one or two panels are too narrow for the title on one line
    fig.suptitle(f"decoder features projected{sep}on the plane of 3 output embeddings (stars)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def _strip(res: Dict) -> Dict:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_bin", type=Path)
    ap.add_argument("--system", action="append", required=True, metavar="NAME=CHECKPOINT",
                    help="a model (repeatable): one panel per model")
    ap.add_argument("--subset", default="valid", help="split run under teacher forcing (default valid)")
    ap.add_argument("--tokens", nargs=3, metavar="TOKEN", help="three target tokens (default: the most frequent content tokens)")
    ap.add_argument("--similar", nargs=3, metavar="TOKEN",
                    help="two close tokens and an unrelated one (default: chosen by output-embedding cosine)")
    ap.add_argument("--no-similar", action="store_true", help="only the first row (three frequent tokens)")
    ap.add_argument("--candidates", type=int, default=30,
                    help="frequent content tokens searched for the --similar default (default 30)")
    ap.add_argument("--max-points", type=int, default=400, help="points drawn per class and panel (default 400; stats use all)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", type=Path, required=True, help="output directory (penultimate.json, penultimate.png)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing penultimate.json in --out")
    return ap


def main(argv=None, prog="labo-fairseq analyze penultimate") -> int:
    ap = _parser(prog)
    args = ap.parse_args(argv)
    if args.candidates < 3 or args.max_points < 1:
        ap.error("need --candidates >= 3 and --max-points >= 1")
    from labo_fairseq.runtime.commandline import require_inputs
    from labo_fairseq.runtime.files import write_json
    from labo_fairseq.runtime.provenance import record
    from labo_fairseq.study.analysis.loading import load

    require_inputs(ap, dirs=[args.data_bin])
    systems = _systems(ap, args.system)
    out_json = args.out / "penultimate.json"
    require_inputs(ap, output=out_json, force=args.force)

    models = {name: load(path, args.data_bin, args.cpu) for name, path in systems.items()}
    first_task = next(iter(models.values()))[1]
    counts, inside = target_counts(first_task, args.subset)
    candidates = content_tokens(counts, first_task.target_dictionary, max(args.candidates, 3), inside)
    if len(candidates) < 3 and not (args.tokens and (args.similar or args.no_similar)):
        ap.error(f"fewer than 3 content tokens among the targets of {args.subset}; give --tokens/--similar")
    triples = {"frequent": list(args.tokens) if args.tokens else candidates[:3]}
    if not args.no_similar:
        triples["similar"] = list(args.similar) if args.similar else similar_triple(
            candidates, [(task.target_dictionary, output_embedding(m)) for m, task in models.values()])
    _check_triples(ap, triples, models, systems, counts, args.subset)
    rows = _rows(models, triples, args.subset, args.max_tokens, args.cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(rows, list(systems), args.out / "penultimate.png", args.max_points)
    summary = {"data_bin": str(args.data_bin), "subset": args.subset, "systems": {k: str(v) for k, v in systems.items()},
               "token_choice": {"frequent": "given" if args.tokens else "most frequent content tokens of the targets",
                                "similar": "given" if args.similar else "output-embedding cosine among "
                                f"the {len(candidates)} most frequent content tokens"},
               "rows": {mode: {"tokens": row["tokens"], "models": {k: _strip(v) for k, v in row["models"].items()}}
                        for mode, row in rows.items()},
               "figure": str(png), "provenance": record(prog, argv)}
    write_json(out_json, summary)
    for mode, row in rows.items():
        for name, res in row["models"].items():
            full = res["full"]
            print(f"{mode} {row['tokens']} | {name}: spread {full['mean_spread']:.3f}, between means "
                  f"{full['mean_distance_between_means']:.3f}, ratio {full['ratio']:.2f}, "
                  f"equidistance {full['equidistance']:.2f}")
    print(f"wrote {out_json}")
    return 0


def _systems(ap: ArgumentParser, specs: List[str]) -> Dict[str, Path]:
    """``--system NAME=CHECKPOINT`` by name; argparse's error for a malformed, missing or repeated one."""
    from labo_fairseq.runtime.commandline import require_inputs

    systems: Dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not name or not path:
            ap.error(f"--system {spec}: expected NAME=CHECKPOINT")
        require_inputs(ap, files=[path])
        if name in systems:
            ap.error(f"--system {name} given twice")
        systems[name] = Path(path)
    return systems


def _check_triples(ap: ArgumentParser, triples: Dict[str, List[str]], models: Dict, systems: Dict[str, Path],
                   counts, subset: str) -> None:
    """argparse's error unless each row has three different tokens, each in every model's target
    dictionary and among the subset's targets."""
    for mode, toks in triples.items():
        if len(set(toks)) != 3:
            ap.error(f"{mode}: three different tokens needed, got {toks}")
        for name, (_m, task) in models.items():
            for t in toks:
                if task.target_dictionary.index(t) == task.target_dictionary.unk():
                    ap.error(f"token {t!r} is not in the target dictionary of {name} ({systems[name]})")
            missing = [t for t in toks if counts[task.target_dictionary.index(t)] == 0]
            if missing:
                ap.error(f"token(s) {missing} never occur as targets in {subset}")


def _rows(models: Dict, triples: Dict[str, List[str]], subset: str, max_tokens: int, cpu: bool) -> Dict:
    """Per row (token triple) and model: the decoder features of those targets, analysed on the
    plane of their output embeddings (:func:`analyse`)."""
    rows = {mode: {"tokens": toks, "models": {}} for mode, toks in triples.items()}
    for name, (model, task) in models.items():
        w_all = output_embedding(model).double().cpu()
        wanted = sorted({t for toks in triples.values() for t in toks})
        ids = [task.target_dictionary.index(t) for t in wanted]
        x, lab = collect(model, task, subset, ids, max_tokens, cpu)
        for mode, toks in triples.items():
            sel = torch.tensor([wanted.index(t) for t in toks])
            keep = (lab.unsqueeze(-1) == sel).any(-1)
            relabel = (lab[keep].unsqueeze(-1) == sel).nonzero()[:, 1]
            w = w_all[[task.target_dictionary.index(t) for t in toks]]
            rows[mode]["models"][name] = analyse(x[keep], relabel, w, toks)
    return rows
