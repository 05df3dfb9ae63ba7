"""Where a sweep's cells run: SLURM job arrays through submitit, or one after the other on this
machine; and the bookkeeping of submitted jobs (RUNS_ROOT/.sweep/jobs.json, squeue, last errors)."""

import datetime
import os
import re
import shlex
import socket
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.files import read_json_if_exists, write_json
from labo_fairseq.runtime.processes import output_of
from labo_fairseq.study.protocol import Roots
from labo_fairseq.study.sweep.selection import CellJob, SweepError, sweep_dir


@dataclass(frozen=True)
class SlurmOptions:
    """``labo-fairseq sweep``'s SLURM options (``--launcher slurm`` only; None: not given)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = None
    cpus_per_job: Optional[int] = None
    mem_gb: Optional[int] = None
    sbatch: Optional[Tuple[str, ...]] = None
    setup: Optional[Tuple[str, ...]] = None
    array_parallelism: Optional[int] = None
    array_max_size: Optional[int] = None
    max_requeues: Optional[int] = None
    job_name: Optional[str] = None


SLURM_OPTIONS = tuple(f.name for f in fields(SlurmOptions))
ACTIVE = {"RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running", "SIGNALING": "running",
          "STAGE_OUT": "running"}  # any other state squeue lists (PENDING, REQUEUED, ...) is "pending"


def load_jobs(roots: Roots) -> Dict[str, Dict]:
    path = sweep_dir(roots) / "jobs.json"
    return read_json_if_exists(path, {})


def save_jobs(roots: Roots, jobs: Dict[str, Dict]) -> None:
    write_json(sweep_dir(roots) / "jobs.json", dict(sorted(jobs.items())))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def squeue() -> Optional[Dict[str, str]]:
    """SLURM job id (array tasks as A_I) -> state, for the jobs SLURM still lists; None without squeue."""
    out = output_of(["squeue", "-h", "-r", "-o", "%i|%T"])
    if out is None:
        return None
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


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


def slurm_parameters(a: SlurmOptions, gpus_per_job: int) -> Dict:
    """submitit's SLURM parameters from the command's options."""
    extra: Dict = {}
    for line in a.sbatch or ():
        key, _, value = line.strip().lstrip("-").partition("=")
        if not key:
            raise SweepError(f"--sbatch {line!r}: give an sbatch option, e.g. --sbatch constraint=volta32gb")
        extra[key] = value if value else True
    params = {"job_name": a.job_name or "labo-sweep", "time": _minutes(a.time or "1440"),
              "array_parallelism": a.array_parallelism or 256}
    if gpus_per_job:
        params["gpus_per_node"] = gpus_per_job
    for key, value in (("partition", a.partition), ("account", a.account), ("qos", a.qos),
                       ("cpus_per_task", a.cpus_per_job), ("setup", list(a.setup or ()))):
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


def submit_slurm(jobs: List[CellJob], roots: Roots, a: SlurmOptions, gpus_per_job: int,
                 records: Dict[str, Dict]) -> None:
    import submitit

    folder = sweep_dir(roots) / "slurm" / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=a.max_requeues)
    executor.update_parameters(**slurm_parameters(a, gpus_per_job))
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
            j(log_path)
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
