"""Sweeps: every cell (dataset x method x τ x seed) of a table as one job that trains, then evaluates.

  labo-fairseq sweep --table 1 --launcher slurm --partition gpu --gpus-per-job 1 --time 12:00:00
  labo-fairseq sweep --datasets iwslt14_de_en --methods ls labo --tau 1.15 1.25 --seeds 1 2 3 --launcher local
  labo-fairseq sweep status --table 1

A job runs the project's own commands, with the roots given here (made absolute against the working
directory): ``python -m labo_fairseq train DATASET METHOD SEED ...`` then ``python -m labo_fairseq
evaluate ...``. A cell whose result JSON exists is skipped; a cell with a run directory but no result
resumes from its checkpoint_last.pt (``train`` resumes an existing run); a cell whose job is still
queued or running is not submitted again.

- ``--launcher slurm``: one SLURM job per cell, submitted as job arrays through submitit. A job that
  reaches its time limit or is preempted is requeued by submitit's checkpointing (and one requeued
  with ``scontrol requeue`` simply starts again): either way ``train`` continues from checkpoint_last.pt,
  and LABO's warm-up count with it.
- ``--launcher local``: the cells one after the other on this machine, in the foreground; stop it
  any time and run the same command again to continue.

The sweep's bookkeeping (submitted jobs, submitit's scripts and logs) is in RUNS_ROOT/.sweep/.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from labo_fairseq import protocol
from labo_fairseq.io import split_extra, write_json
from labo_fairseq.protocol import CONFIGS, Roots, add_root_arguments, method_config, names, read_config, run_tag

SWEEP_DIR = ".sweep"
SLURM_OPTIONS = ("partition", "account", "qos", "time", "cpus_per_job", "mem_gb", "sbatch", "setup",
                 "array_parallelism", "array_max_size", "max_requeues", "job_name")
ACTIVE = {"RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running", "SIGNALING": "running",
          "STAGE_OUT": "running"}  # any other state squeue lists (PENDING, REQUEUED, ...) is "pending"


class SweepError(RuntimeError):
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

    def __call__(self, log=None) -> str:
        if self.result.exists():
            return str(self.result)
        if not protocol.training_completed(self.run_dir):  # resuming a finished run would train one update more
            _run(self.train, log, "train")
        _run(self.evaluate, log, "evaluate")
        return str(self.result)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # train resumes from checkpoint_last.pt on its own


def _run(cmd: List[str], log, what: str) -> None:
    print("+ " + shlex.join(cmd), file=log or sys.stderr, flush=True)
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT if log else None).returncode
    if rc != 0:
        raise RuntimeError(f"{what} exited with status {rc}: {shlex.join(cmd)}")


# ------------------------------------------------------------------------------ bookkeeping

def load_jobs(roots: Roots) -> Dict[str, Dict]:
    path = sweep_dir(roots) / "jobs.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def save_jobs(roots: Roots, jobs: Dict[str, Dict]) -> None:
    write_json(sweep_dir(roots) / "jobs.json", dict(sorted(jobs.items())))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def squeue() -> Optional[Dict[str, str]]:
    """SLURM job id (array tasks as A_I) -> state, for the jobs SLURM still lists; None without squeue."""
    if shutil.which("squeue") is None:
        return None
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in proc.stdout.split() if "|" in line)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_state(rec: Optional[Dict], queue: Optional[Dict[str, str]]) -> Optional[str]:
    """running / pending while the cell's job is alive, None otherwise (or "unknown" without squeue)."""
    if not rec:
        return None
    if rec["launcher"] == "slurm":
        if queue is None:
            return "unknown"
        state = queue.get(rec["job_id"])
        return None if state is None else ACTIVE.get(state, "pending")
    if rec.get("state") == "running" and rec.get("host") == socket.gethostname() and _pid_alive(rec["pid"]):
        return "running"
    return None


ERROR = re.compile(r"(error|exception|traceback|killed|cancelled|out of memory|exited with status|DUE TO)", re.I)
WRAPPER = re.compile(r"(^Traceback|^RuntimeError: (train|evaluate) exited with status|submitit|^raise |^File \")")


def last_error(paths: Sequence[str]) -> str:
    """The last line that looks like an error in the job's logs (else the last line)."""
    lines: List[str] = []
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                lines += [ln.strip() for ln in f.read().splitlines()[-400:] if ln.strip()]
        except OSError:
            continue
    errors = [ln for ln in lines if ERROR.search(ln)]
    # the failing command's own message says more than the job wrapper's traceback around it
    causes = [ln for ln in errors if not WRAPPER.search(ln)]
    pick = (causes or errors or lines or ["no log"])[-1]
    return pick if len(pick) <= 200 else pick[:197] + "..."


# ------------------------------------------------------------------------------ launchers

def _minutes(text: str) -> int:
    """A SLURM time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not m:
        raise SweepError(f"--time {text!r}: give minutes, HH:MM:SS or D-HH:MM:SS")
    parts = [int(x) for x in m.group(2).split(":")]
    if m.group(1) is not None:  # D-H[:M[:S]]
        parts += [0] * (3 - len(parts))
        seconds = int(m.group(1)) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:  # M, M:S or H:M:S
        seconds = {1: lambda p: p[0] * 60, 2: lambda p: p[0] * 60 + p[1],
                   3: lambda p: p[0] * 3600 + p[1] * 60 + p[2]}[len(parts)](parts)
    if seconds < 60:
        raise SweepError(f"--time {text!r} is less than a minute")
    return -(-seconds // 60)


def slurm_parameters(a) -> Dict:
    """submitit's SLURM parameters from the command's options."""
    extra: Dict = {}
    for line in a.sbatch or ():
        key, _, value = line.strip().lstrip("-").partition("=")
        if not key:
            raise SweepError(f"--sbatch {line!r}: give an sbatch option, e.g. --sbatch constraint=volta32gb")
        extra[key] = value if value else True
    params = {"job_name": a.job_name or "labo-sweep", "time": _minutes(a.time or "1440"),
              "array_parallelism": a.array_parallelism or 256}
    if a.gpus_per_job:
        params["gpus_per_node"] = a.gpus_per_job
    for key, value in (("partition", a.partition), ("account", a.account), ("qos", a.qos),
                       ("cpus_per_task", a.cpus_per_job), ("setup", a.setup)):
        if value:
            params[key] = value
    if a.mem_gb:
        params["mem"] = f"{a.mem_gb}GB"
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_script(folder: Path, params: Dict, n_tasks: int) -> str:
    """The sbatch script submitit writes for an array of n_tasks jobs (submitit's own template)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=n_tasks if n_tasks > 1 else None, **params)


def submit_slurm(jobs: List[CellJob], roots: Roots, a, records: Dict[str, Dict]) -> None:
    import submitit

    folder = sweep_dir(roots) / "slurm" / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=a.max_requeues)
    executor.update_parameters(**slurm_parameters(a))
    size = a.array_max_size or 1000
    for start in range(0, len(jobs), size):
        chunk = jobs[start:start + size]
        with executor.batch():
            handles = [executor.submit(j) for j in chunk]
        for j, h in zip(chunk, handles):
            records[j.cell.tag] = {"launcher": "slurm", "job_id": str(h.job_id), "submitted": _now(),
                                   "cell": list(j.cell), "logs": [str(h.paths.stdout), str(h.paths.stderr)]}
        save_jobs(roots, records)
        first = handles[0].job_id.split("_")[0]
        print(f"sweep: submitted {len(chunk)} job(s) as SLURM job {first}"
              + (f" (array 0-{len(chunk) - 1})" if len(chunk) > 1 else ""))


def run_local(jobs: List[CellJob], roots: Roots, records: Dict[str, Dict]) -> int:
    logs = sweep_dir(roots) / "local"
    logs.mkdir(parents=True, exist_ok=True)
    failed = 0
    for i, j in enumerate(jobs, 1):
        log_path = logs / (j.cell.tag.replace("/", "__") + ".log")
        rec = {"launcher": "local", "pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
               "state": "running", "cell": list(j.cell), "logs": [str(log_path)]}
        records[j.cell.tag] = rec
        save_jobs(roots, records)
        print(f"sweep: [{i}/{len(jobs)}] {j.cell.label()} (log: {log_path})", flush=True)
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                j(log)
            rec["state"] = "done"
        except RuntimeError as err:
            failed += 1
            rec["state"], rec["error"] = "failed", str(err)
            print(f"sweep:   failed: {last_error([str(log_path)])}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            rec["state"] = "interrupted"
            save_jobs(roots, records)
            raise
        rec["finished"] = _now()
        save_jobs(roots, records)
    return failed


# ------------------------------------------------------------------------------ commands

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


def _roots(a) -> Roots:
    return Roots.from_args(a)


def _cells(a, prog: str) -> Optional[List[Cell]]:
    if a.table is not None and a.table not in _tables():
        raise SweepError(f"unknown table {a.table!r}; choose from {', '.join(_tables())}")
    if a.table == "distillation":
        spec = table_spec("distillation")
        missing = [] if spec is None else [f"{k}/{n}.yaml" for k in ("datasets", "methods")
                                           for n in spec.get(k, []) if n not in names(k)]
        if spec is None or missing:
            print(f"{prog}: table 'distillation' is skipped: its configs are not in this checkout yet "
                  f"({', '.join(missing) or 'labo_fairseq/configs/sweeps/distillation.yaml'}); nothing to do",
                  file=sys.stderr)
            return None
    return select(a.table, a.datasets, a.methods, a.tau, a.seeds)


def _tables() -> List[str]:
    return sorted(set(names("sweeps")) | {"1", "2", "distillation"})


def sweep_main(argv: List[str], prog: str) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ap)
    ap.add_argument("--launcher", choices=("slurm", "local"), required=True,
                    help="slurm: one SLURM job per cell (submitit); local: the cells one after the other here")
    ap.add_argument("--gpus-per-job", type=int, default=None,
                    help="GPUs each cell trains on (train --gpus; fp16). Default: 1 with slurm; with local, "
                         "1 if CUDA is available, else 0 (CPU)")
    ap.add_argument("--update-freq", type=int, default=1,
                    help="train --update-freq: gradient accumulation, to keep the paper's effective batch on fewer GPUs")
    ap.add_argument("--evaluate-args", default="", metavar="'FLAGS'",
                    help="extra fairseq-generate flags for evaluate, one quoted string (recorded; tables mark them)")
    ap.add_argument("--dry-run", action="store_true",
                    help="list every cell and the exact commands (and the sbatch script), submit nothing")
    sl = ap.add_argument_group("SLURM (--launcher slurm only)")
    sl.add_argument("--partition")
    sl.add_argument("--account")
    sl.add_argument("--qos")
    sl.add_argument("--time", help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00); a job "
                                   "that reaches it is requeued and resumes")
    sl.add_argument("--cpus-per-job", type=int, help="CPUs per job (sbatch --cpus-per-task)")
    sl.add_argument("--mem-gb", type=int, help="memory per job in GB (sbatch --mem)")
    sl.add_argument("--sbatch", action="append", metavar="KEY[=VALUE]",
                    help="an extra #SBATCH line, e.g. --sbatch constraint=volta32gb (repeatable)")
    sl.add_argument("--setup", action="append", metavar="CMD",
                    help="a shell line run before the job, e.g. --setup 'module load cuda' (repeatable)")
    sl.add_argument("--array-parallelism", type=int, help="at most this many jobs of an array run at once (default 256)")
    sl.add_argument("--array-max-size", type=int,
                    help="at most this many jobs per array (the cluster's MaxArraySize; default 1000)")
    sl.add_argument("--max-requeues", type=int, default=None,
                    help="times submitit requeues a job that reached its time limit (default 10)")
    sl.add_argument("--job-name")
    ap.epilog = ("Extra fairseq-train flags go after --; each cell's train command gets them (recorded; the tables "
                 "mark such runs with †).\nFinished cells (result JSON) are skipped; queued or running ones are "
                 "not submitted again;\na run without result resumes from its checkpoint_last.pt.")
    own, train_args = split_extra(argv)
    a = ap.parse_args(own)
    try:
        given = [o for o in SLURM_OPTIONS if getattr(a, o) is not None]
        if a.launcher == "local" and given:
            raise SweepError(f"{', '.join('--' + o.replace('_', '-') for o in given)}: SLURM option(s), "
                             f"not for --launcher local")
        for opt in ("update_freq", "gpus_per_job", "cpus_per_job", "mem_gb", "array_parallelism", "array_max_size", "max_requeues"):
            v = getattr(a, opt)
            if v is not None and v < (0 if opt in ("gpus_per_job", "max_requeues") else 1):
                raise SweepError(f"--{opt.replace('_', '-')} must be >= {0 if opt in ('gpus_per_job', 'max_requeues') else 1}, got {v}")
        if a.max_requeues is None:
            a.max_requeues = 10
        if a.gpus_per_job is None:
            a.gpus_per_job = 1 if a.launcher == "slurm" else _local_gpus(a.dry_run)
        cells = _cells(a, prog)
        if cells is None:
            return 0
        roots = _roots(a)
        if a.launcher == "slurm":
            params = slurm_parameters(a)  # bad --time / --sbatch fail before anything else
        return _submit(a, prog, cells, roots, train_args, shlex.split(a.evaluate_args),
                       params if a.launcher == "slurm" else None)
    except SweepError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def _local_gpus(dry_run: bool = False) -> int:
    from labo_fairseq.io import cuda_visible

    try:
        return 1 if cuda_visible(probe_torch=not dry_run) else 0  # a dry run imports no torch
    except ImportError:
        return 0


def _submit(a, prog: str, cells: List[Cell], roots: Roots, train_args: List[str], evaluate_args: List[str],
            params: Optional[Dict]) -> int:
    records = load_jobs(roots)
    queue = squeue() if a.launcher == "slurm" or any(r["launcher"] == "slurm" for r in records.values()) else None
    todo: List[CellJob] = []
    print(f"# sweep: {len(cells)} cells; runs {roots.runs}, results {roots.results}, data {roots.data_bin}")
    for cell in cells:
        train, evaluate = commands(cell, roots, a.gpus_per_job, train_args, evaluate_args, a.update_freq)
        rd, res = cell_run_dir(roots, cell), cell_result(roots, cell)
        active = job_state(records.get(cell.tag), queue)
        if res.exists():
            print(f"# {cell.label()}: done ({res}); skipped")
            continue
        if active in ("running", "pending"):
            rec = records[cell.tag]
            print(f"# {cell.label()}: {active} as {rec['launcher']} job {rec.get('job_id', rec.get('pid'))}; skipped")
            continue
        what = ("evaluate only (trained)" if protocol.training_completed(rd) else
                "resume from checkpoint_last.pt" if (rd / "checkpoints" / "checkpoint_last.pt").exists() else
                "resume (run directory exists)" if rd.exists() else "new")
        print(f"# {cell.label()}: {what}")
        if a.dry_run:
            print(f"  {shlex.join(train)}\n  {shlex.join(evaluate)}")
        todo.append(CellJob(cell, train, evaluate, rd, res))
    if not todo:
        print(f"{prog}: nothing to {'submit' if a.launcher == 'slurm' else 'run'}: every cell is done or queued")
        return 0
    if a.dry_run:
        if a.launcher == "slurm":
            folder = sweep_dir(roots) / "slurm" / "%j"
            size = a.array_max_size or 1000
            for start in range(0, len(todo), size):
                n = len(todo[start:start + size])
                print(f"\n# sbatch script for {n} job(s): submitit writes it as {folder.parent}/.submission_file_UID.sh "
                      f"and runs `sbatch` on it (kept as {folder.parent}/JOBID/JOBID_submission.sh); each array "
                      f"task unpickles one cell's job")
                print(sbatch_script(folder, params, n))
        print(f"# dry run: {len(todo)} cell(s) would be {'submitted' if a.launcher == 'slurm' else 'run'}")
        return 0
    if a.launcher == "slurm":
        if shutil.which("sbatch") is None:
            raise SweepError("sbatch not found on PATH: run the slurm launcher on a SLURM login node "
                             "(or --launcher local to run the cells on this machine)")
        submit_slurm(todo, roots, a, records)
        return 0
    failed = run_local(todo, roots, records)
    print(f"sweep: {len(todo) - failed} of {len(todo)} cell(s) finished" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


# ------------------------------------------------------------------------------ status

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
                r = json.loads(res.read_text(encoding="utf-8"))
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
    ap = argparse.ArgumentParser(prog=prog, description="The sweep's grid: done / running / pending / failed "
                                 "(with the log's last error) / missing, then the GPU-hours spent and an estimate "
                                 "of those remaining. Without a selection: every cell the sweep has submitted.")
    _common(ap)
    a = ap.parse_args(argv)
    try:
        roots = _roots(a)
        records = load_jobs(roots)
        if a.table or a.datasets or a.methods:
            cells = _cells(a, prog)
            if cells is None:
                return 0
        else:
            cells = [Cell(r["cell"][0], r["cell"][1], r["cell"][2], int(r["cell"][3])) for r in records.values()]
            if not cells:
                raise SweepError(f"no sweep recorded under {sweep_dir(roots)}: give the selection (--table or "
                                 f"--datasets/--methods) or the sweep's --runs-root")
    except SweepError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
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
                spent.setdefault(cell.dataset, []).append(_hours(json.loads(cell_result(roots, cell).read_text(encoding="utf-8"))))
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


def main(argv=None, prog="labo-fairseq sweep") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "status":
        return status_main(argv[1:], f"{prog} status")
    return sweep_main(argv, prog)


if __name__ == "__main__":
    sys.exit(main())
