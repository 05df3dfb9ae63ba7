"""Rebuild the paper's Table 1 and Table 2 (markdown) from the results JSONs of the evaluate command.

  labo-fairseq tables [--results results] [--out tables.md] [--metric bleu|sacrebleu]

Each cell is the mean ± sample standard deviation (n − 1) over the seeds found, the number of
seeds, the paper's number and our difference to it. A cell without results says "missing"; it is
never filled in. LABO gets one row per τ found (the paper explores τ ∈ {1.15, 1.25} and reports one
LABO number per column, shown beside each). Runs trained with extra fairseq flags (``-- ...`` in
the train or evaluate command, i.e. not the paper's protocol) are marked †, and the flags are listed. Datasets
outside the two tables (e.g. the quickstart's) get a table of their own, without paper numbers.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.protocol import absolute

# The paper's numbers (Lu et al., Table 1 and Table 2; restated in ../shared/design/method.md):
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
DEFAULT_TAU = 1.15


def load_results(root: Path) -> List[Dict]:
    out = []
    for path in sorted(root.rglob("*.json")):
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SystemExit(f"tables: error: {path} is not valid JSON ({err})")
        if isinstance(r, dict) and "directions" in r and "dataset" in r:
            r["_path"] = str(path)
            out.append(r)
    return out


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _row_key(r: Dict) -> Tuple[str, Optional[float]]:
    return r["method"], (r.get("tau") or DEFAULT_TAU) if r["method"] == "labo" else None


def _row_title(method: str, tau: Optional[float]) -> str:
    name = METHOD_NAMES.get(method, method)
    return f"{name} τ={tau:g}" if tau is not None else name


class Cells:
    """Scores grouped by (row key) x (dataset, direction), with the seeds and † marks."""

    def __init__(self, results: List[Dict], metric: str):
        self.scores: Dict = defaultdict(list)
        self.modified: Dict = defaultdict(set)
        self.signatures: Dict = defaultdict(set)
        for r in results:
            for pair, d in r["directions"].items():
                key = (_row_key(r), r["dataset"], pair)
                self.scores[key].append((r["seed"], float(d[metric])))
                sig = d["sacrebleu_signature"] if metric == "sacrebleu" else d["paper_metric"]["signature"]
                self.signatures[r["dataset"]].add(f"{d['convention'] if metric == 'bleu' else 'sacrebleu 13a'}: {sig}")
                if r.get("extra_train_args"):
                    self.modified[key].add("train: " + " ".join(r["extra_train_args"]))
                if r.get("extra_generate_args"):
                    self.modified[key].add("generate: " + " ".join(r["extra_generate_args"]))

    def rows(self, method_order: Sequence[str], datasets: Sequence[str]) -> List[Tuple[str, Optional[float]]]:
        keys = {k[0] for k in self.scores if k[1] in datasets}
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
            return "missing" + paper_txt
        mean, std = mean_std([v for _, v in got])
        txt = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "") + f" (n={len(got)})"
        if self.modified.get((row, dataset, pair)):
            txt += " †"
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


def dataset_table(dataset: str, cells: Cells) -> str:
    pairs = sorted({k[2] for k in cells.scores if k[1] == dataset})
    rows = [[_row_title(*row)] + [cells.cell(row, dataset, p) for p in pairs]
            for row in cells.rows(list(METHOD_NAMES), [dataset])
            if any((row, dataset, p) in cells.scores for p in pairs)]
    text = _markdown(f"{dataset} (not a table of the paper)", [p.upper() for p in pairs], rows)
    notes = ["Cells: our mean ± sample std over n seeds."] + _notes(cells, [dataset])
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)


def build(results: List[Dict], metric: str = "bleu", only: Optional[str] = None) -> str:
    results = [r for r in results if not r.get("distillation")]  # students: the distillation view
    cells = Cells(results, metric)
    paper_sets = {c[1] for c in TABLE1_COLUMNS + TABLE2_COLUMNS}
    others = sorted({r["dataset"] for r in results} - paper_sets)
    what = "the paper's BLEU convention per dataset" if metric == "bleu" else "sacrebleu (13a) on detokenized text"
    parts = []
    if only is None:
        parts.append(paper_table(f"Table 1: IWSLT'14 and WMT'14 ({what})", cells, TABLE1_COLUMNS, PAPER_TABLE1,
                                 list(METHOD_NAMES)))
        parts.append(paper_table(f"Table 2: IWSLT'17 multilingual ({what})", cells, TABLE2_COLUMNS, PAPER_TABLE2,
                                 ["ce", "ls", "labo"]))
    parts += [dataset_table(d, cells) for d in others if only in (None, d)]
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
    if not values:
        return "missing"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "") + f" (n={len(values)})"


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
        score = float(r["directions"][pair][metric])
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
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="directory holding results/ (default: the working directory)")
    ap.add_argument("--results", type=Path, help="directory of results JSONs (default: ROOT/results)")
    ap.add_argument("--metric", choices=("bleu", "sacrebleu"), default="bleu",
                    help="bleu: the paper's convention per dataset (default); sacrebleu: 13a on detokenized text")
    ap.add_argument("--dataset", help="only this dataset's own table (a dataset outside Tables 1 and 2)")
    ap.add_argument("--view", choices=("paper", "distillation"), default="paper",
                    help="paper: Tables 1 and 2 (default); distillation: teachers (CE, LS, LABO) vs their students")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--force", action="store_true", help="replace an existing --out file")
    a = ap.parse_args(argv)
    a.results = absolute(a.results) if a.results else absolute(a.root or ".") / "results"
    if not a.results.is_dir():
        ap.error(f"{a.results}: no such directory (the evaluate command writes results there)")
    if a.out and a.out.exists() and not a.force:
        ap.error(f"{a.out} exists; --force to replace it")
    build_view = build_distillation if a.view == "distillation" else build
    text = build_view(load_results(a.results), a.metric, a.dataset)
    sys.stdout.write(text)
    if a.out:
        a.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
