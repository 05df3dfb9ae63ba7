"""Rebuild the paper's Table 1 and Table 2 (markdown) from the results JSONs of the evaluate command.

  labo-fairseq tables [--results results] [--out tables.md] [--metric bleu|sacrebleu|chrf] [--significance]

Each cell is the mean ± sample standard deviation (n − 1) over the seeds found, the number of
seeds, the paper's number and our difference to it. A cell without results says "missing"; it is
never filled in; a metric a result lacks (older results have no chrF; no sacreBLEU without the
original references) shows "–". The metric's sacrebleu signatures are printed under each table.
Results of runs whose training had not completed are marked ‡, of runs that stopped before their
stopping rule said they had converged §; a run found twice (one seed in two files) is refused.
``--significance`` adds, for the tables outside the paper's, LS − CE and LABO − LS with the
seed-aware paired bootstrap of :mod:`labo_fairseq.scoring.stats` where both methods have the same
seeds. LABO gets one row per τ found
(the paper explores τ ∈ {1.15, 1.25} and reports one
LABO number per column, shown beside each). Runs trained with extra fairseq flags (``-- ...`` in
the train or evaluate command, i.e. not the paper's protocol) are marked †, and the flags are listed. Datasets
outside the two tables (e.g. the quickstart's) get a table of their own, without paper numbers.
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.runtime.files import overwrite_refusal, read_json
from labo_fairseq.scoring import stats as S
from labo_fairseq.study.protocol import absolute, method_config, not_converged, result_sentence_stats, test_set_name

# The paper's numbers (Lu et al., Table 1 and Table 2), the only copy in the package:
# BLEU, beam 5, mean ± std over seeds (Table 2 gives means only).
PAPER_TABLE1 = {
    "ce": ["33.9±0.09", "27.8±0.11", "40.0±0.15", "39.0±0.14", "27.1±0.03", "29.8±0.10"],
    "ls": ["34.5±0.14", "28.3±0.16", "40.5±0.16", "39.8±0.05", "27.7±0.09", "31.9±0.09"],
    "cp": ["34.2±0.15", "27.9±0.07", "40.4±0.20", "39.2±0.13", "27.4±0.13", "30.4±0.08"],
    "fl": ["33.0±0.13", "26.8±0.16", "39.2±0.16", "38.3±0.05", "26.6±0.09", "28.9±0.09"],
    "afl": ["34.2±0.14", "27.9±0.13", "40.5±0.09", "39.5±0.16", "27.5±0.10", "30.3±0.08"],
    "labo": ["35.2±0.07", "28.8±0.15", "40.9±0.08", "40.3±0.05", "28.3±0.05", "32.3±0.06"],
}
PAPER_TABLE2 = {"ce": ["26.9", "35.4"], "ls": ["28.0", "36.8"], "labo": ["28.4", "37.2"]}

# (column title, dataset, direction)
TABLE1_COLUMNS = [("DE-EN", "iwslt14_de_en", "de-en"), ("EN-DE", "iwslt14_en_de", "en-de"),
                  ("EN-FR", "iwslt14_en_fr", "en-fr"), ("FR-EN", "iwslt14_fr_en", "fr-en"),
                  ("WMT EN-DE", "wmt14_en_de", "en-de"), ("WMT DE-EN", "wmt14_de_en", "de-en")]
TABLE2_COLUMNS = [("DE-EN", "iwslt17_multi", "de-en"), ("FR-EN", "iwslt17_multi", "fr-en")]
METHOD_NAMES = {"ce": "Transformer (CE)", "ls": "LS", "cp": "CP", "fl": "FL", "afl": "AFL", "labo": "LABO"}
DEFAULT_TAU = float(method_config("labo")["args"]["--labo-tau"])  # what a labo run without --tau trained with


def load_results(root: Path) -> List[Dict]:
    out = []
    for path in sorted(root.rglob("*.json")):
        r = read_json(path)
        if isinstance(r, dict) and "directions" in r and "dataset" in r:
            r["_path"] = str(path)
            out.append(r)
    return out


METRICS = {"bleu": "the paper's BLEU convention per dataset", "sacrebleu": "sacreBLEU against the original references",
           "chrf": "chrF against the original references"}


def metric_value(d: Dict, metric: str) -> Optional[float]:
    """A direction's score in ``metric``, or None where the result has none."""
    v = d.get(metric)
    return None if v is None else float(v)


def signature(d: Dict, metric: str) -> Optional[str]:
    if metric == "bleu":
        return f"{d['convention']}: {d['paper_metric']['signature']}"
    sig = d.get(f"{metric}_signature")
    return None if sig is None or d.get(metric) is None else sig


def _row_key(r: Dict) -> Tuple[str, Optional[float]]:
    return r["method"], (r.get("tau") or DEFAULT_TAU) if r["method"] == "labo" else None


def _row_title(method: str, tau: Optional[float]) -> str:
    name = METHOD_NAMES.get(method, method)
    return f"{name} τ={tau:g}" if tau is not None else name


class Cells:
    """Scores grouped by (row key) x (dataset, direction), with the seeds and †, ‡, § marks; a run
    (dataset, method, τ, seed) found twice is a :class:`UsageError` naming both files (e.g. LABO at
    its default τ in ``labo/`` and ``labo-tau1.15/``), not a second seed."""

    def __init__(self, results: List[Dict], metric: str):
        self.scores: Dict = defaultdict(list)
        self.results: Dict = defaultdict(list)
        self.modified: Dict = defaultdict(set)
        self.incomplete: Dict = defaultdict(bool)
        self.not_converged: Dict = defaultdict(bool)
        self.signatures: Dict = defaultdict(set)
        seen: Dict = {}
        for r in results:
            run = (r["dataset"], _row_key(r), r["seed"])
            if run in seen:
                raise UsageError(f"{r.get('_path', 'a result')} and {seen[run]} are the same run ({r['dataset']} "
                                 f"{_row_title(*_row_key(r))} seed {r['seed']}): keep one")
            seen[run] = r.get("_path", "another result")
            for pair, d in r["directions"].items():
                key = (_row_key(r), r["dataset"], pair)
                self.results[key].append(r)
                value = metric_value(d, metric)
                if value is not None:
                    self.scores[key].append((r["seed"], value))
                sig = signature(d, metric)
                if sig:
                    self.signatures[r["dataset"]].add(sig)
                if r.get("training_completed") is False:
                    self.incomplete[key] = True
                if not_converged(r):
                    self.not_converged[key] = True
                if r.get("extra_train_args"):
                    self.modified[key].add("train: " + " ".join(r["extra_train_args"]))
                if r.get("extra_generate_args"):
                    self.modified[key].add("generate: " + " ".join(r["extra_generate_args"]))

    def rows(self, method_order: Sequence[str], datasets: Sequence[str]) -> List[Tuple[str, Optional[float]]]:
        keys = {k[0] for k in self.results if k[1] in datasets}
        rows = []
        for m in method_order:
            taus = sorted({t for mm, t in keys if mm == m and t is not None}) or ([DEFAULT_TAU] if m == "labo" else [None])
            rows += [(m, t) for t in taus]
        rows += sorted(k for k in keys if k[0] not in method_order)
        return rows

    def cell(self, row, dataset: str, pair: str, paper: Optional[str] = None) -> str:
        got = sorted(self.scores.get((row, dataset, pair), []))
        paper_txt = "" if paper is None else f" · paper {paper}"
        if not got:
            return ("–" if self.results.get((row, dataset, pair)) else "missing") + paper_txt
        mean, _ = S.mean_std([v for _, v in got])
        txt = S.mean_std_text([v for _, v in got])
        if self.modified.get((row, dataset, pair)):
            txt += " †"
        if self.incomplete.get((row, dataset, pair)):
            txt += " ‡"
        if self.not_converged.get((row, dataset, pair)):
            txt += " §"
        if paper is not None:
            txt += f"{paper_txt} · Δ {mean - float(paper.split('±')[0]):+.2f}"
        return txt


def _markdown(title: str, columns: List[str], rows: List[List[str]]) -> str:
    lines = [f"### {title}", "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _notes(cells: Cells, datasets: Sequence[str]) -> List[str]:
    notes = []
    sigs = sorted({s for d in datasets for s in cells.signatures.get(d, ())})
    if sigs:
        notes.append("Signatures: " + "; ".join(f"`{s}`" for s in sigs) + ".")
    mods = sorted({m for k, v in cells.modified.items() if k[1] in datasets for m in v})
    if mods:
        notes.append("† includes runs with extra fairseq flags, not the paper's protocol: "
                     + "; ".join(f"`{m}`" for m in mods) + ".")
    if any(v for k, v in cells.incomplete.items() if k[1] in datasets):
        notes.append("‡ includes results of runs whose training had not completed (a checkpoint named explicitly).")
    if any(v for k, v in cells.not_converged.items() if k[1] in datasets):
        notes.append("§ includes runs that stopped before their stopping rule said they had converged.")
    return notes


def paper_table(title: str, cells: Cells, columns, paper: Dict[str, List[str]], order: Sequence[str]) -> str:
    datasets = [c[1] for c in columns]
    rows = []
    for row in cells.rows(order, datasets):
        ref = paper.get(row[0])
        rows.append([_row_title(*row)] + [cells.cell(row, ds, pair, ref[i] if ref else None)
                                          for i, (_, ds, pair) in enumerate(columns)])
    text = _markdown(title, [c[0] for c in columns], rows)
    notes = ["Cells: our mean ± sample std over n seeds · the paper's number · Δ = ours − paper."] + _notes(cells, datasets)
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)


def column_titles(dataset: str, keys: Sequence[str]) -> List[str]:
    """Test-set names; with the direction in front where the dataset has several."""
    several = len({k.split(".")[0] for k in keys}) > 1
    return [(f"{k.split('.')[0]} " if several else "") + test_set_name(dataset, k) for k in keys]


def _key_order(key: str) -> Tuple[str, int, str]:
    """The test set first, then the extra test sets by name."""
    return key.split(".")[0], 0 if "." not in key else 1, key


# LS against CE, and LABO against LS: the comparisons the project exists for.
SIGNIFICANCE_PAIRS = [(("ls", None), ("ce", None)), (("labo", DEFAULT_TAU), ("ls", None))]


def significance_lines(dataset: str, cells: Cells, keys: Sequence[str], samples: int = 1000) -> List[str]:
    """The seed-aware paired bootstrap (BLEU, the table's convention) of each pair of methods with the
    same seeds, per test set; results without stored sentence statistics are left out, and said so."""
    lines = []
    for (m_b, t_b), (m_a, t_a) in SIGNIFICANCE_PAIRS:
        for key in keys:
            a, b = cells.results.get(((m_a, t_a), dataset, key), []), cells.results.get(((m_b, t_b), dataset, key), [])
            if not a or not b:
                continue
            name = f"{_row_title(m_b, t_b)} − {_row_title(m_a, t_a)}, {test_set_name(dataset, key)}"
            seeds_a, seeds_b = sorted(r["seed"] for r in a), sorted(r["seed"] for r in b)
            if seeds_a != seeds_b:
                lines.append(f"{name}: not tested (seeds {seeds_a} vs {seeds_b} differ)")
                continue
            try:
                sa, sb = ([result_sentence_stats(r, key) for r in sorted(x, key=lambda r: r["seed"])] for x in (a, b))
            except (OSError, KeyError) as err:
                lines.append(f"{name}: not tested (no sentence statistics: {err})")
                continue
            t = S.seed_bootstrap(S.metric("bleu"), sa, sb, samples=samples)
            lines.append(f"{name}: Δ {t['delta']:+.2f} BLEU, 95% CI [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}], "
                         f"p {t['p']} (seed-aware paired bootstrap, {samples} samples, seeds "
                         f"{', '.join(map(str, seeds_a))})")
    return lines


def dataset_table(dataset: str, cells: Cells, significance: bool = False) -> str:
    keys = sorted({k[2] for k in cells.results if k[1] == dataset}, key=_key_order)
    rows = [[_row_title(*row)] + [cells.cell(row, dataset, p) for p in keys]
            for row in cells.rows(list(METHOD_NAMES), [dataset])
            if any((row, dataset, p) in cells.results for p in keys)]
    directions = sorted({k.split(".")[0] for k in keys})
    title = f"{dataset}, {', '.join(d.replace('-', '→') for d in directions)} (not a table of the paper)"
    text = _markdown(title, column_titles(dataset, keys), rows)
    notes = ["Cells: our mean ± sample std over n seeds."] + _notes(cells, [dataset])
    if significance:
        notes += significance_lines(dataset, cells, keys)
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)


def build(results: List[Dict], metric: str = "bleu", only: Optional[str] = None, significance: bool = False) -> str:
    results = [r for r in results if not r.get("distillation")]  # students: the distillation view
    cells = Cells(results, metric)
    paper_sets = {c[1] for c in TABLE1_COLUMNS + TABLE2_COLUMNS}
    others = sorted({r["dataset"] for r in results} - paper_sets)
    what = METRICS[metric]
    parts = []
    if only is None:
        parts.append(paper_table(f"Table 1: IWSLT'14 and WMT'14 ({what})", cells, TABLE1_COLUMNS, PAPER_TABLE1,
                                 list(METHOD_NAMES)))
        parts.append(paper_table(f"Table 2: IWSLT'17 multilingual ({what})", cells, TABLE2_COLUMNS, PAPER_TABLE2,
                                 ["ce", "ls", "labo"]))
    parts += [dataset_table(d, cells, significance) for d in others if only in (None, d)]
    if only is not None and only not in others:
        parts.append(f"No results for {only}.")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- distillation view

DISTILL_TEACHERS = ["ce", "ls", "labo"]
DISTILL_COLUMNS = ["teacher BLEU", "γ (teacher)", "student BLEU, word KD", "student BLEU, sequence KD",
                   "student without KD"]


def _teacher_key(t: Dict) -> Tuple[str, Optional[float]]:
    return t["method"], (t.get("tau") or DEFAULT_TAU) if t["method"] == "labo" else None


def _summary(values: Sequence[float], digits: int = 2) -> str:
    return S.mean_std_text(values, digits) if values else "missing"


def distillation_table(results: List[Dict], dataset: str, pair: str, metric: str = "bleu") -> str:
    """Rows: the teacher's method (CE, LS, LABO per τ). Columns: the teachers' BLEU, their γ (as the
    word-KD students' criterion logged it), the students' BLEU with word-level and sequence-level
    KD from such teachers, and the same student architecture trained without KD (one value, repeated).
    Cells: mean ± sample std over the runs found (teacher seeds, or student runs)."""
    here = [r for r in results if r["dataset"] == dataset and pair in r["directions"]]
    teachers: Dict = defaultdict(list)
    cols: Dict = defaultdict(lambda: defaultdict(list))  # column -> teacher key -> values
    plain: List[float] = []
    for r in here:
        score = metric_value(r["directions"][pair], metric)
        if score is None:
            continue
        d = r.get("distillation")
        if not d:
            if r["method"] in DISTILL_TEACHERS:
                teachers[_row_key(r)].append(score)
            continue
        if d.get("kind") in ("word", "word+seq"):
            key = _teacher_key(d["teachers"][0]) if len({_teacher_key(t) for t in d["teachers"]}) == 1 else ("ensemble", None)
            if d["kind"] == "word":
                cols["word"][key].append(score)
            if (d.get("teacher_gamma") or {}).get("gamma") is not None:
                cols["gamma"][key].append(float(d["teacher_gamma"]["gamma"]))
        if d.get("kind") == "seq":
            cols["seq"][_teacher_key(d["seq_teacher"])].append(score)
        if d.get("kind") == "none":
            plain.append(score)
    keys = set(teachers) | {k for c in cols.values() for k in c}
    rows = []
    for m in DISTILL_TEACHERS:
        taus = sorted(t for mm, t in keys if mm == m and t is not None)
        rows += [(m, t) for t in taus] if taus else [(m, DEFAULT_TAU if m == "labo" else None)]
    rows += sorted(k for k in keys if k[0] not in DISTILL_TEACHERS)
    body = [[_row_title(*k) + " teacher", _summary(teachers.get(k, [])), _summary(cols["gamma"].get(k, []), 3),
             _summary(cols["word"].get(k, [])), _summary(cols["seq"].get(k, [])), _summary(plain)] for k in rows]
    text = _markdown(f"Distillation: {dataset} {pair.upper()} ({metric})", DISTILL_COLUMNS, body).replace(
        "| method |", "| teacher |", 1)
    notes = ["Cells: mean ± sample std over n runs (teacher seeds; student runs). γ: Müller et al.'s teacher "
             "mass off the gold (×V/(V−1)), as the word-KD students' criterion logged it over their last training epoch.",
             "Students: the architecture of configs/student.yaml; word KD = train DATASET kd SEED --teacher RUN; "
             "sequence KD = train DATASET ce SEED --data-variant seqkd:RUN; without KD = train DATASET ce SEED --student."]
    mods = sorted({" ".join(r.get("extra_train_args") or []) for r in here if r.get("extra_train_args")})
    if mods:
        notes.append("Includes runs with extra fairseq flags: " + "; ".join(f"`{m}`" for m in mods) + ".")
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)


def build_distillation(results: List[Dict], metric: str = "bleu", only: Optional[str] = None) -> str:
    """One distillation table per dataset and direction that has student results."""
    seen = sorted({(r["dataset"], p) for r in results if r.get("distillation") for p in r["directions"]})
    parts = [distillation_table(results, ds, p, metric) for ds, p in seen if only in (None, ds)]
    return "\n\n".join(parts or ["No distillation results (students trained with train ... kd/--data-variant/--student)."]) + "\n"


def main(argv=None, prog="labo-fairseq tables") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="directory holding results/ (default: the working directory)")
    ap.add_argument("--results", type=Path, help="directory of results JSONs (default: ROOT/results)")
    ap.add_argument("--metric", choices=tuple(METRICS), default="bleu",
                    help="bleu: the paper's convention per dataset (default); sacrebleu, chrf: the detokenized output "
                         "against the original references (lowercased where the text is)")
    ap.add_argument("--significance", action="store_true",
                    help="tables outside the paper's: LS − CE and LABO − LS, seed-aware paired bootstrap on BLEU")
    ap.add_argument("--dataset", help="only this dataset's own table (a dataset outside Tables 1 and 2)")
    ap.add_argument("--view", choices=("paper", "distillation"), default="paper",
                    help="paper: Tables 1 and 2 (default); distillation: teachers (CE, LS, LABO) vs their students")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--force", action="store_true", help="replace an existing --out file")
    a = ap.parse_args(argv)
    a.results = absolute(a.results) if a.results else absolute(a.root or ".") / "results"
    if not a.results.is_dir():
        ap.error(f"{a.results}: no such directory (the evaluate command writes results there)")
    refusal = a.out and overwrite_refusal(a.out, a.force)
    if refusal:
        ap.error(refusal)
    results = load_results(a.results)
    text = (build_distillation(results, a.metric, a.dataset) if a.view == "distillation"
            else build(results, a.metric, a.dataset, a.significance))
    sys.stdout.write(text)
    if a.out:
        a.out.write_text(text, encoding="utf-8")
    return 0
