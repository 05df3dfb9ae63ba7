"""A sweep's cells: which (dataset, method, τ, seed) a table or a selection names, where each
runs and lands, and one cell as a job (train unless finished, then evaluate)."""

import argparse
import shlex
import sys
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.runtime.processes import run_tool
from labo_fairseq.study import protocol
from labo_fairseq.study.protocol import CONFIGS, Roots, add_root_arguments, method_config, names, read_config, run_tag

SWEEP_DIR = ".sweep"


class SweepError(UsageError):
    """Bad selection or options, or no scheduler; the message says what is wrong."""


class Cell(NamedTuple):
    dataset: str
    method: str
    tau: Optional[float]  # None: the method config's τ (the run directory without -tauT, as `train` names it)
    seed: int

    @property
    def tag(self) -> str:
        """DATASET/METHOD[-tauT]/seedS: the layout of `train`'s run directories and `evaluate`'s results."""
        return f"{self.dataset}/{run_tag(self.method, self.tau)}/seed{self.seed}"

    def label(self) -> str:
        return f"{self.dataset} {self.method}" + ("" if self.tau is None else f" τ={self.tau:g}") + f" seed {self.seed}"


def default_tau() -> float:
    return float(method_config("labo")["args"]["--labo-tau"])


def table_spec(table: str) -> Optional[Dict]:
    """configs/sweeps/TABLE.yaml (datasets, methods, labo_taus, seeds), or None if it is not there."""
    path = CONFIGS / "sweeps" / f"{table}.yaml"
    return read_config(path) if path.is_file() else None


def select(table: Optional[str], datasets: Optional[Sequence[str]], methods: Optional[Sequence[str]],
           taus: Optional[Sequence[float]], seeds: Optional[Sequence[int]]) -> List[Cell]:
    """The cells of a table or of an explicit selection. LABO gets one cell per τ; the config's τ is
    kept as None so that its run is the one `train DATASET labo SEED` (no --tau) makes."""
    if table is not None:
        if datasets or methods:
            raise SweepError("--table and --datasets/--methods select the cells in two ways; give one")
        spec = table_spec(table)
        if spec is None:
            raise SweepError(f"table {table!r}: no sweep config labo_fairseq/configs/sweeps/{table}.yaml")
        datasets, methods = spec["datasets"], spec["methods"]
        taus = taus or spec.get("labo_taus")
        seeds = seeds or spec.get("seeds")
    if not datasets or not methods:
        raise SweepError("select cells with --table 1|2|distillation, or with --datasets and --methods")
    for kind, given in (("datasets", datasets), ("methods", methods)):
        unknown = [n for n in given if n not in names(kind)]
        if unknown:
            raise SweepError(f"unknown {kind[:-1]} {', '.join(map(repr, unknown))}; choose from {', '.join(names(kind))}")
    if taus and "labo" not in methods:
        raise SweepError("--tau applies to the labo method only, which is not selected")
    if any(t <= 0 for t in taus or ()):
        raise SweepError(f"--tau must be > 0, got {' '.join(f'{t:g}' for t in taus)}")
    seeds = list(seeds or (1, 2, 3))
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds must be distinct and >= 0, got {' '.join(map(str, seeds))}")
    d_tau = default_tau()
    tau_list = sorted({None if abs(t - d_tau) < 1e-9 else float(t) for t in taus},
                      key=lambda t: -1.0 if t is None else t) if taus else [None]
    cells = []
    for ds in datasets:
        for m in methods:
            for t in (tau_list if m == "labo" else [None]):
                cells += [Cell(ds, m, t, s) for s in seeds]
    return list(OrderedDict.fromkeys(cells))


def cell_run_dir(roots: Roots, cell: Cell) -> Path:
    return roots.runs / cell.tag


def cell_result(roots: Roots, cell: Cell) -> Path:
    return roots.results / f"{cell.tag}.json"


def sweep_dir(roots: Roots) -> Path:
    """The sweep's own bookkeeping (jobs.json, job logs), beside the runs."""
    return roots.runs / SWEEP_DIR


def commands(cell: Cell, roots: Roots, gpus: int, train_args: Sequence[str] = (),
             evaluate_args: Sequence[str] = (), update_freq: int = 1) -> Tuple[List[str], List[str]]:
    """The cell's `train` and `evaluate` commands: the project's own command lines, nothing else."""
    pos = [cell.dataset, cell.method, str(cell.seed)] + ([] if cell.tau is None else ["--tau", f"{cell.tau:g}"])
    exe = [sys.executable, "-m", "labo_fairseq"]
    train = exe + ["train", *pos, "--data-root", str(roots.data_bin), "--runs-root", str(roots.runs)]
    train += (["--gpus", str(gpus)] if gpus else []) + (["--update-freq", str(update_freq)] if update_freq > 1 else [])
    train += ["--", *train_args] if train_args else []
    evaluate = exe + ["evaluate", *pos, "--data-root", str(roots.data_bin), "--runs-root", str(roots.runs),
                      "--results-root", str(roots.results), "--text-root", str(roots.text)]
    evaluate += ["--", *evaluate_args] if evaluate_args else []
    return train, evaluate


class CellJob:
    """One cell as a job: train (unless it already finished), then evaluate; a checkpointable
    callable for submitit, which requeues it on timeout or preemption."""

    def __init__(self, cell: Cell, train: List[str], evaluate: List[str], run_dir: Path, result: Path):
        self.cell, self.train, self.evaluate, self.run_dir, self.result = cell, train, evaluate, run_dir, result

    def __call__(self, log: Optional[Path] = None) -> str:
        """Train and evaluate, their output appended to ``log``; without one (a SLURM job) to the run's
        ``job.log`` and echoed to the job's stdout, which submitit keeps."""
        if self.result.exists():
            return str(self.result)
        echo, log = log is None, Path(log) if log is not None else self.run_dir / "job.log"
        if not protocol.training_completed(self.run_dir):  # resuming a finished run would train one update more
            _run(self.train, log, "train", echo)
        _run(self.evaluate, log, "evaluate", echo)
        return str(self.result)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # train resumes from checkpoint_last.pt on its own


def _run(cmd: List[str], log: Path, what: str, echo: bool) -> None:
    line = "+ " + shlex.join(cmd)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        print(line, file=f)
    if echo:
        print(line, flush=True)
    rc = run_tool(cmd, log=log, what=what, append=True, echo=echo, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{what} exited with status {rc}: {shlex.join(cmd)}")


def _common(ap: argparse.ArgumentParser) -> None:
    sel = ap.add_argument_group("selection")
    sel.add_argument("--table", help="1, 2 or distillation: every cell of that table "
                                     "(labo_fairseq/configs/sweeps/TABLE.yaml)")
    sel.add_argument("--datasets", nargs="+", metavar="DATASET", help=f"one or more of: {', '.join(names('datasets'))}")
    sel.add_argument("--methods", nargs="+", metavar="METHOD", help=f"one or more of: {', '.join(names('methods'))}")
    sel.add_argument("--tau", nargs="+", type=float, metavar="T",
                     help="LABO's τ values, one cell each (default: the config's, 1.15; Table 1: 1.15 and 1.25)")
    sel.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds (default: the table's, else 1 2 3)")
    add_root_arguments(ap.add_argument_group("where (relative paths: against the working directory)"),
                       "data", "runs", "results", "text")


@dataclass(frozen=True)
class Selection:
    """The options of :func:`_common`: the cells chosen and where they run and land."""

    table: Optional[str] = None
    datasets: Optional[Tuple[str, ...]] = None
    methods: Optional[Tuple[str, ...]] = None
    tau: Optional[Tuple[float, ...]] = None
    seeds: Optional[Tuple[int, ...]] = None
    root: Optional[Path] = None
    data_root: Optional[Path] = None
    runs_root: Optional[Path] = None
    results_root: Optional[Path] = None
    text_root: Optional[Path] = None

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "Selection":
        """From a parser given :func:`_common`'s options (lists made tuples)."""
        values = {f.name: getattr(ns, f.name) for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def roots(self) -> Roots:
        return Roots.from_options(self.root, data=self.data_root, text=self.text_root, runs=self.runs_root,
                                  results=self.results_root)


def _cells(sel: Selection, prog: str) -> Optional[List[Cell]]:
    if sel.table is not None and sel.table not in _tables():
        raise SweepError(f"unknown table {sel.table!r}; choose from {', '.join(_tables())}")
    if sel.table == "distillation":
        spec = table_spec("distillation")
        missing = [] if spec is None else [f"{k}/{n}.yaml" for k in ("datasets", "methods")
                                           for n in spec.get(k, []) if n not in names(k)]
        if spec is None or missing:
            print(f"{prog}: table 'distillation' is skipped: its configs are not in this checkout yet "
                  f"({', '.join(missing) or 'labo_fairseq/configs/sweeps/distillation.yaml'}); nothing to do",
                  file=sys.stderr)
            return None
    return select(sel.table, sel.datasets, sel.methods, sel.tau, sel.seeds)


def _tables() -> List[str]:
    return sorted(set(names("sweeps")) | {"1", "2", "distillation"})
