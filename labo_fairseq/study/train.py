"""Train one dataset x method x seed with the paper's settings (``labo-fairseq train``).

The fairseq-train command comes from the configs (:mod:`labo_fairseq.study.protocol`); the run directory
is ``RUNS/DATASET/METHOD[-tauT]/seedS`` (run.json, train.log, checkpoints/). Paths are absolute,
under ``--root`` (default: the working directory), and fairseq runs in that directory.

  labo-fairseq train iwslt14_de_en labo 1 --dry-run
"""

import argparse
import datetime
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from labo_fairseq.losses.hparams import HP, check_flags
from labo_fairseq.plugin.fixes import SINCE_BEST_ENV
from labo_fairseq.runtime.commandline import ArgumentParser, split_extra
from labo_fairseq.runtime.errors import InvalidFile, UsageError, usage_errors
from labo_fairseq.runtime.files import check_checkpoint, exclusive, read_json, read_json_if_exists, write_json
from labo_fairseq.runtime.processes import run_logged
from labo_fairseq.study.fairseq_tools import USER_DIR, checkpoint_state, fairseq_command, log_record, validation_curve
from labo_fairseq.study.protocol import (
    RUN_MARKER,
    Plateau,
    Roots,
    add_root_arguments,
    add_run_arguments,
    common_config,
    dataset_config,
    flag_value,
    flags,
    is_labo,
    labo_warmup_updates,
    method_config,
    plateau,
    run_dir,
    training_completed,
)


@dataclass
class Launch:
    """How to start one run on this node: the fairseq-train argv (what fairseq parses), and the
    processes to start, each a full command line (CPU ranks, or torchrun for several nodes)."""

    train_argv: List[str]
    processes: List[List[str]]
    run_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(dataset: str, method: str, seed: int, tau: Optional[float] = None, gpus: int = 0,
                  update_freq: int = 1, data_root: Path = Path("data-bin"), runs_root: Path = Path("runs"),
                  extra: Tuple[str, ...] = (), procs: int = 1, nodes: int = 1, node_rank: int = 0,
                  master_addr: Optional[str] = None, master_port: int = 0, student=None) -> Launch:
    """The fairseq-train command of DATASET x METHOD x SEED and how to launch it.

    - ``gpus=0``: CPU; ``procs>1`` starts that many ranks with fairseq's gloo backend
      (``--distributed-no-spawn --distributed-rank R``, the only multi-process setup fairseq runs on CPU).
    - ``gpus=G``, one node: fp16, fairseq spawns G processes (``--distributed-world-size G``).
    - ``gpus=G``, ``nodes=M``: ``torchrun`` on each node (``--node-rank``), world size M*G.
    ``master_port=0`` picks a free port (CPU ranks) or torchrun's default 29500 (nodes).
    ``student``: a :class:`labo_fairseq.study.kd.runs.StudentPlan` (distillation runs: tag, data, flags).
    """
    _check_launch(seed, gpus, update_freq, procs, nodes, node_rank, master_addr, master_port)
    ds, me = dataset_config(dataset), method_config(method)
    if tau is not None and method != "labo":
        raise ValueError("--tau applies to the labo method only")
    if tau is not None:
        HP["tau"].check(tau, "--tau")
    args = {**common_config().get("args", {}), **ds.get("args", {}), **me.get("args", {})}
    if is_labo(method):
        args["--labo-warmup-updates"] = labo_warmup_updates(dataset, method)
    if tau is not None:
        args["--labo-tau"] = tau
    if student is not None:
        args.update(student.args)
    tag, tag_tau = (method, tau) if student is None else (student.tag, None)
    out = run_dir(runs_root, dataset, tag, seed, tag_tau)
    data = ds["data"] if student is None else student.data
    argv = ["fairseq-train", str(Path(data_root) / data), "--user-dir", str(USER_DIR),
            "--task", ds.get("task", "translation")]
    if "source_lang" in ds:
        argv += ["--source-lang", ds["source_lang"], "--target-lang", ds["target_lang"]]
    argv += flags(args) + ["--seed", str(seed), "--save-dir", str(out / "checkpoints")]
    argv += ["--fp16"] if gpus else ["--cpu"]
    world = gpus * nodes if gpus else procs
    if world > 1:
        argv += ["--distributed-world-size", str(world)]
    if update_freq > 1:
        argv += ["--update-freq", str(update_freq)]
    argv += list(extra)
    check_flags(argv)  # the criterion's hyper-parameters, wherever they came from, before anything starts
    return Launch(argv, _processes(argv, gpus, procs, nodes, node_rank, master_addr, master_port), out)


def _check_launch(seed: int, gpus: int, update_freq: int, procs: int, nodes: int, node_rank: int,
                  master_addr: Optional[str], master_port: int) -> None:
    """ValueError naming the first flag of :func:`train_command` out of its range or at odds with another."""
    if seed < 0 or gpus < 0 or update_freq < 1 or procs < 1 or nodes < 1:
        raise ValueError("need seed >= 0, --gpus >= 0, --update-freq >= 1, --procs >= 1, --nodes >= 1")
    if procs > 1 and gpus:
        raise ValueError("--procs is for CPU ranks; with --gpus, fairseq starts one process per GPU")
    if nodes > 1 and not gpus:
        raise ValueError("--nodes needs --gpus (GPUs per node): multi-node training is GPU-only")
    if nodes > 1 and not master_addr:
        raise ValueError("--nodes > 1 needs --master-addr (the host name or address of node rank 0)")
    if not 0 <= master_port <= 65535:
        raise ValueError(f"--master-port must be in [0, 65535] (0: pick one), got {master_port}")
    if not 0 <= node_rank < nodes:
        raise ValueError(f"--node-rank must be in [0, {nodes - 1}]")


def _processes(argv: List[str], gpus: int, procs: int, nodes: int, node_rank: int, master_addr: Optional[str],
               master_port: int) -> List[List[str]]:
    """The command lines that start ``argv`` on this node: CPU ranks (gloo), torchrun, or fairseq itself."""
    exe = fairseq_command("train")
    if not gpus and procs > 1:
        port = master_port or _free_port()
        gloo = ["--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp", "--distributed-init-method",
                f"tcp://127.0.0.1:{port}", "--distributed-no-spawn"]
        return [[*exe, *argv[1:], *gloo, "--distributed-rank", str(r)] for r in range(procs)]
    if nodes > 1:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
        return [[torchrun, "--nnodes", str(nodes), "--node-rank", str(node_rank), "--nproc-per-node", str(gpus),
                 "--master-addr", master_addr, "--master-port", str(master_port or 29500), *exe, *argv[1:]]]
    return [[*exe, *argv[1:]]]


class Progress:
    """fairseq-train's output as one line per epoch for the terminal (its full log stays in train.log):
    the epoch's loss and plain NLL (bits), the validation's NLL and BLEU, and the time left to the cap."""

    def __init__(self, argv: List[str]):
        cap_update, cap_epoch = flag_value(argv, "--max-update"), flag_value(argv, "--max-epoch")
        self.max_update = int(cap_update) if cap_update not in (None, "0") else None
        self.max_epoch = int(cap_epoch) if cap_epoch not in (None, "0") else None
        self.start = time.monotonic()
        self.pending = ""

    def __call__(self, line: str) -> Optional[str]:
        if "Traceback" in line or "Error" in line:  # fairseq failing: the user sees why at once
            return line
        found = log_record(line)
        if found is None or found[0] not in ("train", "valid"):
            return None
        kind, rec = found
        if kind == "train":
            self.pending = (f"epoch {rec.get('epoch')}: loss {rec.get('train_loss')} nll {rec.get('train_nll_loss')} "
                            f"({rec.get('train_num_updates')} updates, {self.left(rec)})")
            return self.pending + "\n"
        bleu = f", BLEU {rec['valid_bleu']}" if "valid_bleu" in rec else ""
        return f"  valid: nll {rec.get('valid_nll_loss')}{bleu}\n"

    def left(self, rec: dict) -> str:
        elapsed = time.monotonic() - self.start
        done = [(int(rec.get("train_num_updates") or 0), self.max_update), (int(rec.get("epoch") or 0), self.max_epoch)]
        fractions = [d / cap for d, cap in done if cap]
        shown = f"{elapsed / 60:.0f} min"
        if fractions and max(fractions) > 0:
            shown += f", at most ~{elapsed * (1 / max(fractions) - 1) / 60:.0f} min left"
        return shown


def log_paths(out: Path, n_processes: int, node_rank: int) -> List[Path]:
    """train.log for the lead process; one file per other CPU rank or node."""
    if n_processes > 1:
        return [out / ("train.log" if r == 0 else f"train.rank{r}.log") for r in range(n_processes)]
    return [out / ("train.log" if node_rank == 0 else f"train.node{node_rank}.log")]


def _record(o: "TrainOptions", launch: Launch, previous: dict) -> dict:
    from labo_fairseq.runtime.provenance import git_state, hardware

    record = {
        "dataset": o.dataset, "method": o.method, "seed": o.seed, "tau": o.tau, "gpus": o.gpus, "procs": o.procs,
        "nodes": o.nodes, "update_freq": o.update_freq, "command": launch.train_argv,
        "launch": launch.processes, "extra_args": list(o.fairseq_args), **git_state(), "hardware": hardware(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    record["sessions"] = previous.get("sessions", []) + [
        {k: record[k] for k in ("started", "commit", "dirty", "hardware", "command")}]
    record["started"] = previous.get("started", record["started"])  # the run's start, not this session's
    return record


def cmd_train(o: "TrainOptions") -> int:
    roots = o.roots()
    student, launch = _plan(o, roots)
    out = launch.run_dir
    exists = out.exists()
    lead = o.node_rank == 0  # on several nodes, only node 0 manages the run directory
    if exists and o.force and lead and not (out / RUN_MARKER).exists():
        raise UsageError(f"{out} was not made by this command; not deleting it")
    if exists and not o.force and training_completed(out) and _finished(out, launch):
        return 0
    data = Path(launch.train_argv[1])
    if not data.is_dir() and student is None:
        hint = (f"no prepared data at {data}: run `labo-fairseq prepare {dataset_config(o.dataset)['data']}"
                f"{' --root ' + str(roots.root) if o.root else ''}` first")
        if not o.dry_run:
            raise UsageError(hint)
        print(f"# {hint}")
    logs = log_paths(out, len(launch.processes), o.node_rank)
    if o.dry_run:
        if exists:
            print(f"# {out} exists: " + ("--force would delete it first" if o.force and lead else
                                          "fairseq would resume from its checkpoint_last.pt"))
        print(f"# run directory {out}: {RUN_MARKER}, checkpoints/, log " + ", ".join(p.name for p in logs))
        for cmd in launch.processes:
            print(shlex.join(cmd))
        return 0
    if not lead:  # the other nodes' processes leave the run directory to node 0's
        return _train(o, roots, launch, student, logs, exists, lead, None)
    # one process per run: a second one (a stray command left running) would write the same checkpoints
    with exclusive(out, f"run {out}") as lock:
        return _train(o, roots, launch, student, logs, exists, lead, lock)


def _plan(o: "TrainOptions", roots: Roots):
    """(the student plan or None, the :class:`Launch`); :class:`UsageError` for bad options or a
    student's missing teacher or data."""
    from labo_fairseq.study.kd import runs as kd_runs

    with usage_errors():  # the hyper-parameters' and configs' checks raise ValueError
        student = kd_runs.plan(o.dataset, dataset_config(o.dataset)["data"], o.method, o.tau, o.teacher, o.data_variant,
                               o.student, roots.runs, roots.data_bin)
        launch = train_command(o.dataset, o.method, o.seed, o.tau, o.gpus, o.update_freq, roots.data_bin, roots.runs,
                               tuple(o.fairseq_args), o.procs, o.nodes, o.node_rank, o.master_addr, o.master_port,
                               student)
        if student is not None and not o.dry_run:
            missing = [str(p) for p in student.needs if not p.exists()]
            if missing:
                raise kd_runs.KDError(f"not found: {', '.join(missing)} (train the teacher first; for "
                                      "--data-variant seqkd:RUN, run labo-fairseq distill-data DATASET RUN)")
    return student, launch


def _finished(out: Path, launch: Launch) -> bool:
    """Whether a run that finished training has nothing left to do (said on stderr either way): not
    when the command raises its caps, unless its stopping rule found it converged, nor when it stopped
    before its rule or its cap said so."""
    done = read_json(out / RUN_MARKER)
    rule = plateau(validation_curve(out / "train.log"), launch.train_argv)
    longer = "" if rule.converged else _longer_caps(done.get("command", []), launch.train_argv)  # the rule has spoken
    if longer:
        print(f"train: {out} finished, training on to {longer}", file=sys.stderr)
        return False
    if not rule.stopped and rule.last_epoch is not None:  # e.g. a resumed fairseq that counted from zero
        print(f"train: {out} stopped before its rule or its cap said so ({rule.since_best} of {rule.patience} "
              "validations without improvement): training on", file=sys.stderr)
        return False
    print(f"train: {out} has finished training ({_finished_how(out)}); nothing to do (--force starts over, "
          "a larger --max-update/--max-epoch after -- trains on)", file=sys.stderr)
    return True


def _train(o: "TrainOptions", roots: Roots, launch: Launch, student, logs: List[Path], exists: bool,
           lead: bool, lock: Optional[int]) -> int:
    """Start (or resume) the run, record it in run.json, and mark it completed when fairseq finishes;
    fairseq inherits the run's ``lock``."""
    out = launch.run_dir
    resumed = exists and not o.force
    save_dir = Path(roots.root) / flag_value(launch.train_argv, "--save-dir")
    restored = resume_point(save_dir, launch.train_argv, repair=lead) if resumed else None  # checked first
    if exists and o.force and lead:  # emptied, not removed: the lock is on the directory
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    elif exists:
        print(f"{out} exists: resuming (fairseq continues from checkpoint_last.pt); --force to start over",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    if lead:
        marker = out / RUN_MARKER
        record = _record(o, launch, read_json_if_exists(marker, {}))
        if student is not None:
            record["distillation"] = student.record
        write_json(marker, record)
    status, rule = _run(o, roots, launch, logs, resumed, restored, lock)
    if status and lead:
        tail = "".join(logs[0].read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        print(f"train: fairseq-train failed (exit {status}); the end of {logs[0]}:\n{tail}", file=sys.stderr)
    if status == 0 and lead:  # fairseq stopped by the rule or reached --max-update/--max-epoch: finished
        _mark_completed(out, rule)
    return status


def _run(o: "TrainOptions", roots: Roots, launch: Launch, logs: List[Path], resumed: bool, restored: Optional[int],
         lock: Optional[int]):
    """Run fairseq until its stopping rule or its cap ends the run: ``(exit status, the rule)``.

    A resumed run gets its count of validations since the best in ``LABO_VALIDATIONS_SINCE_BEST``,
    which the plugin's fix of fairseq's patience seeds it with (fairseq's own count lives in its
    process). The count is read from the lead's log on every node (other nodes log no validations),
    so all ranks stop together."""
    log = launch.run_dir / "train.log"
    rule = None
    if resumed:  # validations logged after the state fairseq resumes from (``restored``) are done again
        rule = plateau([r for r in validation_curve(log) if restored is None or r.get("updates", 0) <= restored],
                       launch.train_argv)
    env = None
    if rule is not None and rule.patience:
        if rule.stopped:  # stopped after its last validation, before fairseq could say so
            return 0, rule
        env = {**os.environ, SINCE_BEST_ENV: str(rule.since_best)}
    status = run_logged(launch.processes, logs, cwd=roots.root, echo=Progress(launch.train_argv) if o.quiet else True,
                        env=env, keep_fds=() if lock is None else (lock,))
    return status, plateau(validation_curve(log), launch.train_argv)


def checkpoint_updates(path: Path) -> Optional[int]:
    """The updates a fairseq checkpoint holds; None where it is missing, empty or cut short."""
    try:
        check_checkpoint(path)
        return checkpoint_state(path)["updates"]
    except (InvalidFile, OSError, RuntimeError, EOFError):  # torch: RuntimeError on an archive it cannot read
        return None


def resume_point(save_dir: Path, argv: List[str], repair: bool) -> Optional[int]:
    """The updates a resumed fairseq-train starts from: its checkpoint_last.pt's (0: none, a fresh
    start; None: the command restores another file). fairseq saves one checkpoint (the best, an epoch's
    or an interval's) and copies it to the others, checkpoint_last.pt last, so a stop during the copies
    leaves checkpoint_last.pt older, missing or cut short: ``repair`` (the lead node) puts back the
    newest state saved (of the best and the three checkpoints written last)."""
    if flag_value(argv, "--restore-file") or "--no-last-checkpoints" in argv:
        return None
    last = save_dir / "checkpoint_last.pt"
    others = sorted((p for p in save_dir.glob("checkpoint*.pt") if p != last), key=lambda p: p.stat().st_mtime)
    newest = max(((checkpoint_updates(p) or -1, p) for p in {save_dir / "checkpoint_best.pt", *others[-3:]}),
                 key=lambda x: x[0], default=(-1, None))
    at_last = checkpoint_updates(last)
    if newest[0] >= 0 and (at_last is None or newest[0] > at_last):
        if repair:
            how = "was older" if at_last is not None else "was cut short" if last.exists() else "was missing"
            part = last.with_name(last.name + ".part")
            shutil.copyfile(newest[1], part)
            os.replace(part, last)
            print(f"train: {last} {how}: put back from {newest[1].name} ({newest[0]} updates), the newest state saved",
                  file=sys.stderr)
        return newest[0]
    if at_last is None and last.exists():
        raise InvalidFile(f"{last} is truncated or damaged (an incomplete checkpoint) and no newer checkpoint is there "
                          "to put back: --force starts the run over, or restore the file")
    return at_last or 0


def _mark_completed(out: Path, rule: Plateau) -> None:
    """``completed`` in run.json, and where the stopping rule left the run."""
    record = read_json(out / RUN_MARKER)
    record["completed"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    if rule.patience:
        record["stopping"] = rule.as_dict()
    write_json(out / RUN_MARKER, record)


def _longer_caps(before: List[str], now: List[str]) -> str:
    """The caps (``--max-update``, ``--max-epoch``) that ``now`` raises over ``before`` ('' if none):
    a finished run given more to do trains on; the same command again does nothing."""
    raised = []
    for flag in ("--max-update", "--max-epoch"):
        old, new = (int(flag_value(c, flag) or 0) for c in (before, now))
        if old and (new == 0 or new > old):
            raised.append(f"{flag} {new or 'unbounded'} (was {old})")
    return ", ".join(raised)


def _finished_how(out: Path) -> str:
    stopping = read_json(out / RUN_MARKER).get("stopping")
    if not stopping:
        return "reached its --max-epoch/--max-update"
    if stopping["converged"]:
        return (f"converged: best epoch {stopping['best_epoch']}, stopped at epoch {stopping['last_epoch']} after "
                f"{stopping['patience']} validations without improvement")
    how = "reached its cap" if stopping.get("cap_reached") else "was stopped by another of fairseq's stops"
    return f"{how} at epoch {stopping['last_epoch']} before its patience ran out: not converged"


@dataclass(frozen=True)
class TrainOptions:
    """``labo-fairseq train``'s options (see :func:`main`'s parser); ``fairseq_args``: those after ``--``."""

    dataset: str
    method: str
    seed: int
    tau: Optional[float] = None
    gpus: int = 0
    procs: int = 1
    nodes: int = 1
    node_rank: int = 0
    master_addr: Optional[str] = None
    master_port: int = 0
    update_freq: int = 1
    root: Optional[Path] = None
    data_root: Optional[Path] = None
    runs_root: Optional[Path] = None
    teacher: Tuple[str, ...] = ()
    data_variant: Optional[str] = None
    student: bool = False
    force: bool = False
    quiet: bool = False
    dry_run: bool = False
    fairseq_args: Tuple[str, ...] = ()

    def roots(self) -> Roots:
        return Roots.from_options(self.root, data=self.data_root, runs=self.runs_root)


def main(argv=None, prog="labo-fairseq train") -> int:
    t = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(t, "LABO's tau (default from configs/methods/labo.yaml: 1.15)")
    t.add_argument("--gpus", type=int, default=0, help="GPUs per node (0: CPU); >1 spawns one process per GPU; fp16")
    t.add_argument("--procs", type=int, default=1,
                   help="CPU only: ranks to start on this machine (fairseq's gloo backend, legacy_ddp)")
    t.add_argument("--nodes", type=int, default=1, help="nodes (with --gpus): run this command on each, via torchrun")
    t.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0..NODES-1")
    t.add_argument("--master-addr", help="address of node rank 0 (--nodes > 1)")
    t.add_argument("--master-port", type=int, default=0,
                   help="rendezvous port (default: a free port for CPU ranks, 29500 for torchrun)")
    t.add_argument("--update-freq", type=int, default=1,
                   help="gradient accumulation: keep 4096 tokens per GPU batch and raise this when you have "
                        "fewer GPUs than the effective batch you want")
    add_root_arguments(t, "data", "runs")
    from labo_fairseq.study.kd import runs as kd_runs

    kd_runs.add_arguments(t)
    t.add_argument("--force", action="store_true", help="delete an existing run directory (made by this command) first")
    t.add_argument("--quiet", action="store_true",
                   help="show one line per epoch (loss, NLL, validation, time left) instead of fairseq's output; "
                        "train.log has it all either way")
    t.add_argument("--dry-run", action="store_true", help="print the command(s) this would start, run nothing")
    t.epilog = ("Extra fairseq-train flags go after --, e.g. -- --max-update 100 (they come last, so they win).\n"
                "An existing run directory is resumed from its checkpoint_last.pt; --force starts over.")
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = split_extra(argv)
    a = t.parse_args(own)
    return cmd_train(TrainOptions(**{**vars(a), "teacher": tuple(a.teacher)}, fairseq_args=tuple(extra)))
