"""``labo-fairseq sweep status``: each cell's state, its last error, and the GPU-hours spent and left."""

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.files import read_json
from labo_fairseq.study.protocol import Roots
from labo_fairseq.study.sweep.launchers import job_state, last_error, load_jobs, squeue
from labo_fairseq.study.sweep.selection import (
    Cell,
    Selection,
    SweepError,
    _cells,
    _common,
    cell_result,
    cell_run_dir,
    sweep_dir,
)


def _hours(result: Dict) -> Tuple[float, float]:
    """(GPU-hours, wall-hours) of a result: training (its last checkpoint's wall time) x GPUs, plus
    decoding on one GPU when it ran on CUDA."""
    train = result.get("train") or {}
    last = train.get("last_checkpoint") or result.get("checkpoint") or {}
    train_s = float(last.get("train_wall_s") or 0.0)
    ev = result.get("evaluate") or {}
    eval_s = float(ev.get("wall_s") or 0.0)
    gpus = int(train.get("gpus") or 0) * int(train.get("nodes") or 1)
    gpu_h = (train_s * gpus + (eval_s if ev.get("device") == "cuda" else 0.0)) / 3600
    return gpu_h, (train_s + eval_s) / 3600


def status_rows(cells: List[Cell], roots: Roots, records: Dict[str, Dict],
                queue: Optional[Dict[str, str]]) -> List[Tuple[Cell, str, str]]:
    rows = []
    for cell in cells:
        res, rec, rd = cell_result(roots, cell), records.get(cell.tag), cell_run_dir(roots, cell)
        if res.exists():
            try:
                r = read_json(res)
                gpu_h, wall_h = _hours(r)
                bleu = ", ".join(f"{p} {d['bleu']:.2f}" for p, d in r["directions"].items())
                rows.append((cell, "done", f"BLEU {bleu} · {gpu_h:.2f} GPU-h · {wall_h:.2f} h wall"))
            except (ValueError, KeyError, TypeError) as err:
                rows.append((cell, "failed", f"{res}: unreadable result ({err})"))
            continue
        state = job_state(rec, queue)
        if state in ("running", "pending", "unknown"):
            ident = rec.get("job_id") or f"pid {rec.get('pid')}"
            detail = f"{rec['launcher']} job {ident}"
            if state == "unknown":
                detail += " (squeue not available: state unknown)"
            rows.append((cell, "pending" if state == "unknown" else state, detail))
        elif rec:
            ident = rec.get("job_id") or f"pid {rec.get('pid')}"
            rows.append((cell, "failed", f"{rec['launcher']} job {ident}: {last_error(rec.get('logs', []))}"))
        else:
            partial = (rd / "checkpoints" / "checkpoint_last.pt").exists()
            rows.append((cell, "missing", "partial run: resumes from checkpoint_last.pt" if partial else ""))
    return rows


def status_main(argv: List[str], prog: str) -> int:
    ap = ArgumentParser(prog=prog, description="The sweep's grid: done / running / pending / failed "
                                 "(with the log's last error) / missing, then the GPU-hours spent and an estimate "
                                 "of those remaining. Without a selection: every cell the sweep has submitted.")
    _common(ap)
    sel = Selection.from_namespace(ap.parse_args(argv))
    roots = sel.roots()
    records = load_jobs(roots)
    if sel.table or sel.datasets or sel.methods:
        cells = _cells(sel, prog)
        if cells is None:
            return 0
    else:
        cells = [Cell(r["cell"][0], r["cell"][1], r["cell"][2], int(r["cell"][3])) for r in records.values()]
        if not cells:
            raise SweepError(f"no sweep recorded under {sweep_dir(roots)}: give the selection (--table or "
                             f"--datasets/--methods) or the sweep's --runs-root")
    queue = squeue() if any(r["launcher"] == "slurm" for r in records.values()) else None
    rows = status_rows(sorted(cells, key=lambda c: (c.dataset, c.method, c.tau or 0.0, c.seed)), roots, records, queue)
    w = [max(len(x) for x in col) for col in zip(("dataset", "method"), *[
        (c.dataset, c.method if c.tau is None else f"{c.method} τ={c.tau:g}") for c, _, _ in rows])]
    print(f"{'dataset'.ljust(w[0])}  {'method'.ljust(w[1])}  seed  state    detail")
    for c, state, detail in rows:
        m = c.method if c.tau is None else f"{c.method} τ={c.tau:g}"
        print(f"{c.dataset.ljust(w[0])}  {m.ljust(w[1])}  {str(c.seed).ljust(4)}  {state.ljust(7)}  {detail}".rstrip())
    counts = OrderedDict((s, 0) for s in ("done", "running", "pending", "failed", "missing"))
    for _, s, _ in rows:
        counts[s] += 1
    print("\n" + " · ".join(f"{k} {v}" for k, v in counts.items()) + f"  ({len(rows)} cells)")
    print(gpu_hours_report(rows, roots))
    return 0


def gpu_hours_report(rows: List[Tuple[Cell, str, str]], roots: Roots) -> str:
    """GPU-hours (and wall-hours) spent on finished cells; remaining ones estimated per dataset from
    the mean of its finished cells."""
    spent: Dict[str, List[Tuple[float, float]]] = {}
    left: Dict[str, int] = {}
    for cell, state, _ in rows:
        if state == "done":
            try:
                spent.setdefault(cell.dataset, []).append(_hours(read_json(cell_result(roots, cell))))
            except (ValueError, OSError):
                pass
        else:
            left[cell.dataset] = left.get(cell.dataset, 0) + 1
    tot_g = sum(g for v in spent.values() for g, _ in v)
    tot_w = sum(w for v in spent.values() for _, w in v)
    lines = [f"spent: {tot_g:.2f} GPU-hours ({tot_w:.2f} hours of wall time) on {sum(map(len, spent.values()))} "
             f"finished cell(s)"]
    est_g = est_w = 0.0
    unknown = []
    for ds, n in sorted(left.items()):
        if ds not in spent:
            unknown.append(f"{ds} ({n})")
            continue
        mg = sum(g for g, _ in spent[ds]) / len(spent[ds])
        mw = sum(w for _, w in spent[ds]) / len(spent[ds])
        est_g, est_w = est_g + n * mg, est_w + n * mw
        lines.append(f"  {ds}: {n} cell(s) left x {mg:.2f} GPU-h ({mw:.2f} h wall) per finished cell")
    remaining = f"estimated remaining: {est_g:.2f} GPU-hours ({est_w:.2f} hours of wall time)"
    if unknown:
        remaining += f"; no estimate yet for {', '.join(unknown)}: no finished cell of that dataset"
    lines.insert(1, remaining)
    return "\n".join(lines)
