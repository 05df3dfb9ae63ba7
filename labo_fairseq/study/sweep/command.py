"""``labo-fairseq sweep``: the command line (selection, launcher, roots), dispatching to status."""

import argparse
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser, split_extra
from labo_fairseq.study import protocol
from labo_fairseq.study.protocol import Roots
from labo_fairseq.study.sweep.launchers import (
    SLURM_OPTIONS,
    SlurmOptions,
    job_state,
    load_jobs,
    run_local,
    sbatch_script,
    slurm_parameters,
    squeue,
    submit_slurm,
)
from labo_fairseq.study.sweep.selection import (
    Cell,
    CellJob,
    Selection,
    SweepError,
    _cells,
    _common,
    cell_result,
    cell_run_dir,
    commands,
    sweep_dir,
)
from labo_fairseq.study.sweep.status import status_main


@dataclass(frozen=True)
class SweepOptions:
    """``labo-fairseq sweep``'s options (see :func:`parse`); ``train_args``: those after ``--``."""

    selection: Selection
    slurm: SlurmOptions
    launcher: str
    gpus_per_job: int
    update_freq: int = 1
    evaluate_args: Tuple[str, ...] = ()
    dry_run: bool = False
    train_args: Tuple[str, ...] = ()


def _parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=sys.modules["labo_fairseq.study.sweep"].__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return ap


def parse(argv: List[str], prog: str) -> SweepOptions:
    """The options, checked (:class:`SweepError` naming the first that is wrong)."""
    own, train_args = split_extra(argv)
    a = _parser(prog).parse_args(own)
    given = [o for o in SLURM_OPTIONS if getattr(a, o) is not None]
    if a.launcher == "local" and given:
        raise SweepError(f"{', '.join('--' + o.replace('_', '-') for o in given)}: SLURM option(s), "
                         f"not for --launcher local")
    for opt in ("update_freq", "gpus_per_job", "cpus_per_job", "mem_gb", "array_parallelism", "array_max_size",
                "max_requeues"):
        v = getattr(a, opt)
        if v is not None and v < (0 if opt in ("gpus_per_job", "max_requeues") else 1):
            least = 0 if opt in ("gpus_per_job", "max_requeues") else 1
            raise SweepError(f"--{opt.replace('_', '-')} must be >= {least}, got {v}")
    slurm = {k: tuple(getattr(a, k)) if isinstance(getattr(a, k), list) else getattr(a, k) for k in SLURM_OPTIONS}
    return SweepOptions(
        selection=Selection.from_namespace(a),
        slurm=SlurmOptions(**{**slurm, "max_requeues": 10 if a.max_requeues is None else a.max_requeues}),
        launcher=a.launcher,
        gpus_per_job=a.gpus_per_job if a.gpus_per_job is not None else
        1 if a.launcher == "slurm" else _local_gpus(a.dry_run),
        update_freq=a.update_freq, evaluate_args=tuple(shlex.split(a.evaluate_args)), dry_run=a.dry_run,
        train_args=tuple(train_args))


def sweep_main(argv: List[str], prog: str) -> int:
    o = parse(argv, prog)
    cells = _cells(o.selection, prog)
    if cells is None:
        return 0
    # bad --time / --sbatch fail before anything else
    params = slurm_parameters(o.slurm, o.gpus_per_job) if o.launcher == "slurm" else None
    return _submit(o, prog, cells, o.selection.roots(), params)


def _local_gpus(dry_run: bool = False) -> int:
    from labo_fairseq.runtime.processes import cuda_visible

    try:
        return 1 if cuda_visible(probe_torch=not dry_run) else 0  # a dry run imports no torch
    except ImportError:
        return 0


def _submit(o: SweepOptions, prog: str, cells: List[Cell], roots: Roots, params: Optional[Dict]) -> int:
    records = load_jobs(roots)
    queue = squeue() if o.launcher == "slurm" or any(r["launcher"] == "slurm" for r in records.values()) else None
    todo: List[CellJob] = []
    print(f"# sweep: {len(cells)} cells; runs {roots.runs}, results {roots.results}, data {roots.data_bin}")
    for cell in cells:
        train, evaluate = commands(cell, roots, o.gpus_per_job, o.train_args, o.evaluate_args, o.update_freq)
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
        if o.dry_run:
            print(f"  {shlex.join(train)}\n  {shlex.join(evaluate)}")
        todo.append(CellJob(cell, train, evaluate, rd, res))
    if not todo:
        print(f"{prog}: nothing to {'submit' if o.launcher == 'slurm' else 'run'}: every cell is done or queued")
        return 0
    if o.dry_run:
        if o.launcher == "slurm":
            folder = sweep_dir(roots) / "slurm" / "%j"
            size = o.slurm.array_max_size or 1000
            for start in range(0, len(todo), size):
                n = len(todo[start:start + size])
                print(f"\n# sbatch script for {n} job(s): submitit writes it as {folder.parent}/.submission_file_UID.sh "
                      f"and runs `sbatch` on it (kept as {folder.parent}/JOBID/JOBID_submission.sh); each array "
                      f"task unpickles one cell's job")
                print(sbatch_script(folder, params, n))
        print(f"# dry run: {len(todo)} cell(s) would be {'submitted' if o.launcher == 'slurm' else 'run'}")
        return 0
    if o.launcher == "slurm":
        if shutil.which("sbatch") is None:
            raise SweepError("sbatch not found on PATH: run the slurm launcher on a SLURM login node "
                             "(or --launcher local to run the cells on this machine)")
        submit_slurm(todo, roots, o.slurm, o.gpus_per_job, records)
        return 0
    failed = run_local(todo, roots, records)
    print(f"sweep: {len(todo) - failed} of {len(todo)} cell(s) finished" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def main(argv=None, prog="labo-fairseq sweep") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "status":
        return status_main(argv[1:], f"{prog} status")
    return sweep_main(argv, prog)
