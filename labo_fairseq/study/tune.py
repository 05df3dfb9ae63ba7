"""Tune a study's setting on validation only (``labo-fairseq tune GRID``).

A grid (``configs/grids/GRID.yaml``) names a dataset config, a method, a seed and fairseq-train
flags with the values to try; every combination is one run of ``labo-fairseq train`` with those
flags appended, in its own runs root ``ROOT/grids/GRID/POINT/``, trained until the dataset config's
stopping rule (``--patience``) or its cap ends it. No test set is decoded: each point is judged by
its best validation BLEU (the dataset's checkpoint metric). Each finished point is written to
``RESULTS/grids/GRID/POINT.json`` (curve, plateau, command, commit, hardware), and the table with
the choice to ``RESULTS/grids/GRID.{json,md}``: the point with the best validation metric, chosen
only once every point has finished. Runs go ``--parallel`` at a time within ``--budget-minutes``;
the next call resumes them (exit status 3 until the grid is complete).
"""

import argparse
import itertools
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.runtime.files import read_json, read_json_if_exists, write_json
from labo_fairseq.runtime.processes import run_queue, run_tool, thread_env
from labo_fairseq.study.fairseq_tools import validation_curve
from labo_fairseq.study.protocol import (
    CONFIGS,
    RUN_MARKER,
    Plateau,
    Roots,
    absolute,
    dataset_config,
    flag_value,
    flags,
    plateau,
    portable_command,
    read_config,
    run_dir,
    training_completed,
)

NOT_FINISHED = 3


@dataclass(frozen=True)
class Point:
    """One combination of a grid: its name (``dropout0.1-lr1e-3``) and its fairseq-train flags."""

    name: str
    args: Tuple[Tuple[str, str], ...]


def grid_names() -> List[str]:
    return sorted(p.stem for p in (CONFIGS / "grids").glob("*.yaml"))


def grid_config(name: str) -> Dict:
    """``configs/grids/NAME.yaml``, checked: its dataset exists and every axis has values."""
    if name not in grid_names():
        raise ValueError(f"unknown grid {name!r}; choose from {', '.join(grid_names()) or '(none)'}")
    g = read_config(CONFIGS / "grids" / f"{name}.yaml")
    for key in ("dataset", "method", "seed", "grid"):
        if key not in g:
            raise ValueError(f"grid {name}: no {key!r}")
    dataset_config(g["dataset"])  # raises for an unknown dataset
    if not g["grid"] or any(not isinstance(v, list) or not v for v in g["grid"].values()):
        raise ValueError(f"grid {name}: 'grid' must map each flag to a non-empty list of values")
    return g


def points(g: Dict) -> List[Point]:
    """Every combination, the first axis outermost."""
    axes = list(g["grid"].items())
    out = []
    for values in itertools.product(*(v for _, v in axes)):
        args = tuple((flag, str(v)) for (flag, _), v in zip(axes, values))
        out.append(Point("-".join(f"{flag.lstrip('-')}{v}" for flag, v in args), args))
    return out


class Tune:
    """One call of the command: the grid, where its runs live, what is finished."""

    def __init__(self, name: str, roots: Roots, threads: Optional[int] = None, budget_minutes: float = 60.0,
                 reserve_s: float = 45.0):
        self.name, self.roots, self.g = name, roots, grid_config(name)
        self.points = points(self.g)
        self.threads, self.reserve_s = threads, reserve_s
        self.deadline = time.monotonic() + 60 * budget_minutes
        self.terminated = False
        self.lf = [sys.executable, "-m", "labo_fairseq"]

    def left(self) -> float:
        return -1.0 if self.terminated else self.deadline - time.monotonic() - self.reserve_s

    def runs_root(self, p: Point) -> Path:
        return self.roots.root / "grids" / self.name / p.name

    def run_dir(self, p: Point) -> Path:
        return run_dir(self.runs_root(p), self.g["dataset"], self.g["method"], int(self.g["seed"]), None)

    def result_path(self, p: Point) -> Path:
        return self.roots.results / "grids" / self.name / f"{p.name}.json"

    def report_path(self) -> Path:
        return self.roots.results / "grids" / f"{self.name}.json"

    def train_cmd(self, p: Point) -> List[str]:
        return [*self.lf, "train", self.g["dataset"], self.g["method"], str(self.g["seed"]),
                "--root", str(self.roots.root), "--data-root", str(self.roots.data_bin),
                "--runs-root", str(self.runs_root(p)), "--", *flags(dict(p.args))]

    def env(self) -> Dict[str, str]:
        return thread_env(self.threads)

    def record(self, p: Point) -> Optional[Dict]:
        """A point's run as far as it went: its curve, the stopping rule's verdict and provenance."""
        rd = self.run_dir(p)
        if not (rd / RUN_MARKER).is_file():
            return None
        run = read_json(rd / RUN_MARKER)
        curve = validation_curve(rd / "train.log")
        rule = plateau(curve, run["command"])
        return {"grid": self.name, "point": p.name, "args": dict(p.args), "dataset": self.g["dataset"],
                "method": self.g["method"], "seed": self.g["seed"], "completed": training_completed(rd),
                "plateau": rule.as_dict(), "metric": flag_value(run["command"], "--best-checkpoint-metric"),
                "curve": [{k: r.get(k) for k in ("epoch", "updates", "bleu", "nll_loss", "wall")} for r in curve],
                "train": {"command": portable_command(run["command"], self.roots.root),
                          **{k: run.get(k) for k in ("commit", "dirty", "hardware", "started", "completed")},
                          "sessions": len(run.get("sessions", []))}}

    def finish(self, p: Point) -> bool:
        """After a train command exits 0: the point's record, kept."""
        if not training_completed(self.run_dir(p)):
            return False
        write_json(self.result_path(p), self.record(p))
        return True

    def kept(self, p: Point) -> Optional[Dict]:
        """The point's kept record if it says its training is over, else None (a record of a run that
        stopped before its rule or cap said so, as a resumed fairseq could, is trained on)."""
        rec = read_json_if_exists(self.result_path(p))
        return rec if rec is not None and _stopped(rec) else None

    def done(self, p: Point) -> bool:
        return self.kept(p) is not None

    def train(self, parallel: int) -> Tuple[bool, list]:
        for p in self.points:  # finished in an earlier call whose record was not written
            if training_completed(self.run_dir(p)) and not self.result_path(p).is_file():
                self.finish(p)
        todo = [p for p in self.points if not self.done(p)]
        logs = self.roots.root / "logs" / "tune" / self.name
        jobs = [(p, self.train_cmd(p), logs / f"{p.name}.train.out") for p in todo]
        return run_queue(jobs, parallel, self.left, self.finish, env=self.env(), interrupted=lambda: self.terminated)

    def report(self) -> Dict:
        """Every point's best validation metric, epochs and convergence; the choice once all finished."""
        rows = []
        for p in self.points:
            rec = self.kept(p) or self.record(p)  # not kept, or stale: the run as it stands
            rows.append({"point": p.name, "args": dict(p.args), "finished": bool(rec and rec["completed"] and _stopped(rec)),
                         "started": rec is not None,
                         "train": {k: (rec or {}).get("train", {}).get(k) for k in ("command", "commit", "hardware")},
                         **({k: rec["plateau"][k] for k in ("best", "best_epoch", "last_epoch", "converged")}
                            if rec else {"best": None, "best_epoch": None, "last_epoch": None, "converged": False})})
        done = [r for r in rows if r["finished"]]
        scored = [r for r in done if r["best"] is not None]
        maximize = "--maximize-best-checkpoint-metric" in flags(dataset_config(self.g["dataset"]).get("args", {}))
        chosen = None
        if scored and len(done) == len(rows):  # max/min keep the first of equals: the declared order
            chosen = (max if maximize else min)(scored, key=lambda r: r["best"])["point"]
        return {"grid": self.name, "config": self.g, "rows": rows, "chosen": chosen,
                "rule": "the point with the best validation metric, once every point has finished"}


def _stopped(rec: Dict) -> bool:
    """Whether a point's record says its training is over: by its rule or its cap."""
    return Plateau.from_dict(rec["plateau"]).stopped


def markdown(rep: Dict) -> str:
    metric = "valid BLEU"
    lines = [f"# Tuning grid {rep['grid']}: {rep['config']['method']} seed {rep['config']['seed']}, "
             f"dataset {rep['config']['dataset']}", "",
             f"| point | best {metric} | best epoch | last epoch | converged |", "|---|---|---|---|---|"]
    for r in rep["rows"]:
        best = f"{r['best']:.2f}" if r["best"] is not None else "–"
        state = (("yes" if r["converged"] else "no: reached the cap") if r["finished"]
                 else "training" if r.get("started", True) else "not started")
        mark = " **(chosen)**" if r["point"] == rep["chosen"] else ""
        lines.append(f"| {r['point']}{mark} | {best} | {r['best_epoch'] or '–'} | {r['last_epoch'] or '–'} | {state} |")
    lines += ["", f"Chosen: {rep['chosen'] or 'not yet (some points have not finished)'} ({rep['rule']})."]
    return "\n".join(lines) + "\n"


def write_report(t: Tune) -> Dict:
    rep = t.report()
    write_json(t.report_path(), rep)
    t.report_path().with_suffix(".md").write_text(markdown(rep), encoding="utf-8")
    return rep


def main(argv=None, prog="labo-fairseq tune") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", help=f"one of: {', '.join(grid_names())}")
    ap.add_argument("--root", type=Path, help="directory holding data-bin/, grids/ and results/ (default: .)")
    ap.add_argument("--results-root", type=Path,
                    help="where each finished point's record and the table go (default: ROOT/results). A "
                         "checkout's results/ keeps them with the code: a lost --root then retrains only the "
                         "points that had not finished")
    ap.add_argument("--source", type=Path, help="directory with the dataset's raw files, for an offline prepare "
                                                "when its data-bin is missing")
    ap.add_argument("--parallel", type=int, default=1, help="runs trained at a time (default 1)")
    ap.add_argument("--threads", type=int, help="CPU threads per run (OMP_NUM_THREADS; default: torch's choice)")
    ap.add_argument("--budget-minutes", type=float, default=600.0,
                    help="wall time of this call (default 600); the next call resumes")
    ap.add_argument("--report", action="store_true", help="only write the table of the points present")
    ap.add_argument("--dry-run", action="store_true", help="print the train commands of the points not finished, "
                                                           "run nothing")
    a = ap.parse_args(argv)
    if a.parallel < 1 or (a.threads is not None and a.threads < 1) or a.budget_minutes <= 0:
        ap.error("--parallel and --threads must be >= 1, --budget-minutes > 0")
    try:
        t = Tune(a.grid, Roots.from_options(a.root, results=a.results_root), a.threads, a.budget_minutes)
    except ValueError as err:
        ap.error(str(err))

    def on_sigterm(signum, frame):
        t.terminated = True

    signal.signal(signal.SIGTERM, on_sigterm)
    if a.dry_run:  # the points a call would train
        for p in t.points:
            if not t.done(p):
                print(shlex.join(t.train_cmd(p)))
        return 0
    if not a.report:
        data = t.roots.data_bin / dataset_config(t.g["dataset"])["data"]
        if not data.is_dir():
            cmd = [*t.lf, "prepare", dataset_config(t.g["dataset"])["data"], "--root", str(t.roots.root)]
            cmd += ["--source", str(absolute(a.source)), "--offline"] if a.source else []
            run_tool(cmd, env=t.env(), what="prepare")
        complete, failed = t.train(a.parallel)
        for p, child in failed:
            print(f"tune: {child.failure(p.name, chars=1500)}", file=sys.stderr)
        if failed:
            return 1
    rep = write_report(t)
    sys.stdout.write(markdown(rep))
    if not a.report and not complete:
        print("tune: stopped " + ("by SIGTERM" if t.terminated else "for the time budget")
              + "; run the same command again to continue", file=sys.stderr)
        return NOT_FINISHED
    unfinished = [p.name for p in t.points if not t.done(p)]
    if not a.report and unfinished:  # a run that ended before its rule or cap said so
        print(f"tune: not finished by their rule or cap: {', '.join(unfinished)}; run the same command again to "
              "train on", file=sys.stderr)
        return NOT_FINISHED
    return 0
