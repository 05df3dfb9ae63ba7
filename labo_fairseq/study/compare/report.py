"""The comparison's report: which results are compared, the statistics, the markdown."""

import functools
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.runtime.files import read_json
from labo_fairseq.runtime.provenance import portable
from labo_fairseq.scoring import stats as S
from labo_fairseq.study.protocol import (
    Plateau,
    absolute,
    dataset_config,
    flag_value,
    is_labo,
    method_config,
    names,
    not_converged,
    result_candidates,
    result_sentence_stats,
    test_set_name,
)

DATASET = "multi30k_de_en_iwslt"
DATA = "multi30k.de-en"
METHODS = ("ce", "ls", "labo")
# (system, baseline): the comparisons the project exists for
PAIRS = (("ls", "ce"), ("labo", "ls"))
MIN_SEEDS = 3
NAMES = {"ce": "CE", "ls": "LS", "labo": "LABO"}


def label(method: str) -> str:
    """A method's name in the report: CE, LS, LABO, or an ablation's ``name:``."""
    return NAMES.get(method) or method_config(method).get("name", method)


def pairs(methods: Sequence[str]) -> List[Tuple[str, str]]:
    """(system, baseline) pairs tested: LS − CE, LABO − LS, and each ablation of LABO − LABO."""
    return [*PAIRS, *((m, "labo") for m in ablations(methods))]


def default_tau() -> float:
    return float(method_config("labo")["args"]["--labo-tau"])


def ablations(methods: Sequence[str]) -> List[str]:
    """The methods that are ablations of LABO (``base: labo``)."""
    return [m for m in methods if m not in METHODS and is_labo(m)]


def report_name(dataset: str, methods: Sequence[str], tau: float, tiny: bool = False) -> str:
    """``DATASET``, with ``_tauT`` when LABO runs at another τ than its config's, ``_ablations`` when
    ablations of LABO are among the methods and ``_tiny`` for ``--tiny``."""
    other_tau = "labo" in methods and tau != default_tau()
    return (dataset + (f"_tau{tau:g}" if other_tau else "") + ("_ablations" if ablations(methods) else "")
            + ("_tiny" if tiny else ""))


class ReportError(UsageError):
    """Results that cannot be compared (other configs or data), named."""


@functools.lru_cache(maxsize=None)
def protocol_flags() -> frozenset:
    """Flags a method, a seed or a run's place sets: what may differ between the runs compared
    (read from the method configs once)."""
    out = {"--seed", "--save-dir", "--user-dir", "--labo-warmup-updates", "--labo-tau", "--cpu", "--fp16",
           "--distributed-world-size", "--teacher-path"}
    for m in names("methods"):
        out |= set(method_config(m).get("args", {}))
    return frozenset(out)


def protocol_key(command: Sequence[str]) -> Tuple[str, ...]:
    """A run's fairseq-train command without what :func:`protocol_flags` names, its data directory by
    name only: equal for runs of one config on the same data, wherever they ran."""
    skip, out, i = protocol_flags(), [Path(command[1]).name], 2
    while i < len(command):
        tok = command[i]
        has_value = i + 1 < len(command) and not command[i + 1].startswith("--")
        if tok in skip:
            i += 2 if has_value else 1
            continue
        out.append(tok)
        i += 1
    return tuple(out)




def _load(path: Path) -> Dict:
    r = read_json(path)
    r["_path"] = str(path)
    return r


def results_in(dirs: Sequence[Path], dataset: str, methods: Sequence[str], tau: float) -> Dict:
    """Every ``DIR/DATASET/TAG/seedS.json`` of the methods in the results directories ``dirs`` (e.g.
    one per GPU allocation), by (method, seed, tau); a seed of a method found twice is an error naming
    both files."""
    found: Dict = {}
    for d in dirs:
        for m in methods:
            t = tau if m == "labo" else None
            tags = {p.parent.name for p in result_candidates(absolute(d), dataset, m, 0, t)}
            for path in sorted(p for tag in sorted(tags) for p in (absolute(d) / dataset / tag).glob("seed*.json")):
                if not path.stem[4:].isdigit():
                    continue
                run = (m, int(path.stem[4:]), t)
                if run in found:
                    raise ReportError(f"{m} seed {run[1]} is in {found[run]} and in {path}: give each allocation its "
                                      "own seeds (--seeds)")
                found[run] = path
    return found


def max_epoch(command: Sequence[str]) -> Optional[int]:
    """The ``--max-epoch`` a fairseq-train command ran with (its last occurrence wins), or None."""
    value = flag_value(command, "--max-epoch")
    return int(value) if value is not None else None


def build_report(dataset: str, found: Dict[Tuple[str, int, Optional[float]], Path], tau: float,
                 samples: int = 1000, tiny: bool = False) -> Dict:
    """Mean ± std per method and test set (BLEU, sacreBLEU, chrF; n, and whether under MIN_SEEDS),
    the differences of :func:`pairs` (seed-aware bootstrap with Holm's adjustment over the test sets;
    per seed pair sacrebleu's bootstrap and AR), and per method the chosen checkpoints' epochs,
    validation NLL and training time. Refuses results of other configs or data (:func:`protocol_key`),
    naming two that differ."""
    results = _load_comparable(dataset, found)
    first = next(iter(results.values()))
    methods = [m for m in METHODS if any(r[0] == m for r in results)] + sorted({r[0] for r in results} - set(METHODS))
    keys = list(dict.fromkeys(k for res in results.values() for k in res["directions"]))  # a set one run lacks too
    holder = {k: next(res["directions"][k] for res in results.values() if k in res["directions"]) for k in keys}
    table: Dict = {}
    for key in keys:
        per = {method: _cell(results, method, key) for method in methods}
        table[key] = {"methods": per, "comparisons": _comparisons(results, per, methods, key, tau, samples)}
    _adjust_holm(table)
    config_epochs = dataset_config(dataset).get("args", {}).get("--max-epoch")
    return {"dataset": dataset, "tau": tau, "tiny": tiny, "bleu": first.get("bleu_convention"),
            "max_epoch": max_epoch(first["train"]["command"]),
            "config_max_epoch": int(config_epochs) if config_epochs is not None else None,
            "signatures": {k: {"bleu": holder[k]["paper_metric"]["signature"],
                               **{m: holder[k].get(f"{m}_signature") for m in ("sacrebleu", "chrf")}}
                           for k in keys},
            "test_sets": table, "runs": {m: _runs(results, m) for m in methods}, "samples": samples,
            "curves": validation_curves(results),
            "results": {result_name(m, s): portable(p) for (m, s, _), p in found.items()}}


def result_name(method: str, seed: int) -> str:
    """A result's name in a report's ``results``."""
    return f"{method} seed {seed}"


def _load_comparable(dataset: str, found: Dict) -> Dict:
    """The results, loaded; :class:`ReportError` when there are none or two of other configs or data."""
    if not found:
        raise ReportError(f"no results of {dataset} yet (train and evaluate first)")
    results = {r: _load(p) for r, p in found.items()}
    first = next(iter(results.values()))
    key0 = protocol_key(first["train"]["command"])
    for res in results.values():
        if protocol_key(res["train"]["command"]) != key0:
            raise ReportError(f"{res['_path']} and {first['_path']} were trained with different configs or data: "
                              "not compared (one config, one data-bin per report)")
    return results


def _cell(results: Dict, method: str, key: str) -> Dict:
    """One method's scores on one test set over its seeds: each metric's values, mean, std and n."""
    rs = sorted(((r[1], res) for r, res in results.items() if r[0] == method and key in res["directions"]),
                key=lambda x: x[0])
    cell: Dict = {"seeds": [s for s, _ in rs]}
    for metric in ("bleu", "sacrebleu", "chrf"):
        values = [res["directions"][key].get(metric) for _, res in rs]
        values = [v for v in values if v is not None]
        mean, std = S.mean_std(values) if values else (None, None)
        cell[metric] = {"values": values, "mean": mean, "std": std, "n": len(values),
                        "under_min_seeds": len(values) < MIN_SEEDS}
    cell["incomplete_training"] = [s for s, res in rs if res.get("training_completed") is False]
    cell["not_converged"] = [s for s, res in rs if not_converged(res)]
    return cell


def _comparisons(results: Dict, per: Dict, methods: List[str], key: str, tau: float, samples: int) -> Dict:
    """The differences of :func:`pairs` on one test set, over the seeds both methods have."""
    m_ = S.metric("bleu")
    comparisons = {}
    for b, a in pairs(methods):
        if b not in per or a not in per:
            continue
        common = sorted(set(per[a]["seeds"]) & set(per[b]["seeds"]))
        if not common:
            continue
        st = {m: {s: result_sentence_stats(results[(m, s, tau if m == "labo" else None)], key) for s in common}
              for m in (a, b)}
        seed_aware = S.seed_bootstrap(m_, [st[a][s] for s in common], [st[b][s] for s in common], samples)
        comparisons[f"{b}_minus_{a}"] = {
            "seeds": common,
            "seed_aware": seed_aware,
            "over_seeds": S.seed_permutation(seed_aware["base_scores"], seed_aware["system_scores"]),
            "per_seed": {s: {"bootstrap": S.paired_bootstrap(m_, st[a][s], st[b][s], samples),
                             "approximate_randomization": S.paired_ar(m_, st[a][s], st[b][s], 10 * samples)}
                         for s in common},
        }
    return comparisons


def _adjust_holm(table: Dict) -> None:
    """Holm's adjustment of each pair's p-values (seed-aware bootstrap; permutation over seeds): one
    family per pair and test, its test sets."""
    for name in {n for t in table.values() for n in t["comparisons"]}:
        for test in ("seed_aware", "over_seeds"):
            tests = [t["comparisons"][name][test] for t in table.values() if name in t["comparisons"]]
            for sa, p in zip(tests, S.holm([sa["p_value"] for sa in tests])):
                sa["p_holm"], sa["holm_family"] = p, len(tests)


def _runs(results: Dict, method: str) -> List[Dict]:
    """A method's runs by seed: the chosen checkpoint, its validation, training time and provenance."""
    rs = sorted(((r[1], res) for r, res in results.items() if r[0] == method), key=lambda x: x[0])
    return [{
        "seed": s, "epoch": res["checkpoint"].get("epoch"), "updates": res["checkpoint"].get("updates"),
        "valid_metric": res["checkpoint"].get("valid_metric"), "valid_value": res["checkpoint"].get("valid_value"),
        "stopping": res["train"].get("stopping"),
        "valid_nll_bits": (res.get("validation") or {}).get("nll_loss"),
        "last_updates": ((res["train"].get("last_checkpoint") or {}).get("updates")),
        "train_wall_s": ((res["train"].get("last_checkpoint") or {}).get("train_wall_s")),
        "hardware": res["train"].get("hardware"), "commit": res["train"].get("commit"),
        "training_completed": res.get("training_completed"),
        "max_epoch": max_epoch(res["train"]["command"]),
    } for s, res in rs]


def validation_curves(results: Dict) -> Dict[str, Dict[str, List[List[float]]]]:
    """Validation BLEU per epoch of every run, by method label (CE, LS, LABO, then the ablations) and
    seed (from each result's curve)."""
    out: Dict[str, Dict[str, List[List[float]]]] = {}
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, seed, _), res in sorted(results.items(), key=lambda x: (order.get(x[0][0], len(order)), x[0][:2])):
        rows = [[r["epoch"], r["bleu"]] for r in res.get("validation_curve") or [] if r.get("bleu") is not None]
        if rows:
            out.setdefault(label(method), {})[str(seed)] = rows
    return out


METRIC_NAMES = {"bleu": "BLEU", "nll_loss": "NLL (bits)", "loss": "loss (bits)"}


def run_cells(r: Dict) -> List[str]:
    """A run's row of the report after its chosen epoch: where it stopped, whether its rule says
    converged, the chosen checkpoint's validation metric named, NLL, updates, time."""
    value = r.get("valid_value", r.get("valid_bleu"))  # reports written before the metric was named: BLEU
    metric = METRIC_NAMES.get(r.get("valid_metric") or "bleu", r.get("valid_metric"))
    stop = r.get("stopping") or {}
    converged = Plateau.from_dict(stop).verdict if stop else "–"
    return [str(stop.get("last_epoch", "–")), converged, "–" if value is None else f"{metric} {value:.2f}",
            "–" if r["valid_nll_bits"] is None else f"{r['valid_nll_bits']:.3f}", str(r["last_updates"]),
            "–" if r["train_wall_s"] is None else f"{r['train_wall_s'] / 60:.0f} min"]


def markdown(rep: Dict) -> str:
    """The report as markdown: one table of scores, one of differences, one of the runs."""
    ds = rep["dataset"]
    methods = list(next(iter(rep["test_sets"].values()))["methods"])

    def cell(d, metric):
        if not d[metric]["n"]:
            return "–"
        return (S.mean_std_text(d[metric]["values"]) + (" *" if d[metric]["under_min_seeds"] else "")
                + (" ‡" if d["incomplete_training"] else "") + (" §" if d.get("not_converged") else ""))

    head = (f"### {ds}: " + ", ".join(label(m) for m in methods) + f" (LABO τ={rep['tau']:g}), beam 5"
            + (" — TINY: a pipeline check, not a result" if rep["tiny"] else ""))
    if rep.get("max_epoch") and rep.get("config_max_epoch") and rep["max_epoch"] != rep["config_max_epoch"]:
        head += (f" — {rep['max_epoch']} epochs per run instead of the config's {rep['config_max_epoch']} "
                 "(what fitted the allocation): another protocol than the full one")
    lines = [head, "", "| test set | metric | " + " | ".join(label(m) for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for key, t in rep["test_sets"].items():
        for metric, title in (("bleu", f"BLEU ({rep['bleu']})"), ("sacrebleu", "sacreBLEU"), ("chrf", "chrF")):
            lines.append(f"| {test_set_name(ds, key)} | {title} | "
                         + " | ".join(cell(t["methods"][m], metric) for m in methods) + " |")
    lines += ["", "| test set | difference (BLEU) | seeds | Δ | 95% CI | p (seed-aware bootstrap) | p, Holm over the test sets "
                  "| p over training seeds (permutation; Holm) | p per seed: bootstrap / AR |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, t in rep["test_sets"].items():
        for name, c in t["comparisons"].items():
            b, a = name.split("_minus_")
            sa = c["seed_aware"]
            holm = "–" if sa.get("p_holm") is None else S.format_p(sa["p_holm"], sa["samples"])  # older reports lack it
            per = ", ".join(f"{s}: {v['bootstrap']['p']} / {v['approximate_randomization']['p']}"
                            for s, v in c["per_seed"].items())
            ps = c.get("over_seeds")  # older reports lack it
            seeds = "–" if ps is None else f"{ps['p']} ({ps['p_holm']:.3f}; ≥ {ps['min_p']:.3f} with these seeds)"
            lines.append(f"| {test_set_name(ds, key)} | {label(b)} − {label(a)} | "
                         f"{', '.join(map(str, c['seeds']))} | {sa['delta']:+.2f} | "
                         f"[{sa['ci95'][0]:+.2f}, {sa['ci95'][1]:+.2f}] | {sa['p']} | {holm} | {seeds} | {per} |")
    lines += ["", "| method | seed | chosen epoch (updates) | stopped at epoch | converged | valid metric of the chosen "
                  "checkpoint | valid NLL (bits) | updates | training time |", "|---|---|---|---|---|---|---|---|---|"]
    for m, rs in rep["runs"].items():
        for r in rs:
            lines.append(f"| {label(m)} | {r['seed']} | {r['epoch']} ({r['updates']}) | " + " | ".join(run_cells(r)) + " |")
    sig = next(iter(rep["signatures"].values()))
    notes = [f"Cells: mean ± sample std over n seeds; * fewer than {MIN_SEEDS} seeds; ‡ includes a run whose training "
             "had not completed; § includes a run that stopped (at its epoch cap, or by another of fairseq's stops) "
             "before its stopping rule said it had converged.",
             f"Differences: over the seeds both methods have; seed-aware paired bootstrap ({rep['samples']} samples: "
             "one set of sentence indices per sample for every seed of both methods; Δ of the seed-averaged corpus "
             "BLEU), and per seed pair "
             f"sacrebleu's paired bootstrap ({rep['samples']}) and approximate randomization ({10 * rep['samples']}). "
             "The seed-aware bootstrap holds the trained models fixed (the test set's sampling); the exact permutation "
             "test over training seeds asks whether the methods' per-seed corpus BLEU could be one population (the "
             "variation between training runs; its smallest possible p is shown). "
             "Holm: the p-values of one difference and test over the test sets, adjusted for testing it on each.",
             "Signatures: " + "; ".join(f"{k} `{v}`" for k, v in sig.items() if v)]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


