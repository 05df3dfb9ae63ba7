"""Sequence-level knowledge distillation data (Kim & Rush, 2016): the teacher's beam-5 translations
of the whole training set, binarized with the dataset's own dictionaries.

  labo-fairseq distill-data DATASET RUN     (RUN: the teacher, METHOD[-tauT]/seedS or a run directory)

Translates the prepared (binarized, BPE'd) training split with ``fairseq-generate --gen-subset
train --beam 5``, in ``--shards`` pieces (fairseq's own batch sharding); each finished piece is kept,
so an interrupted run resumes where it stopped. Every training sentence must come back, or nothing
is binarized. The source side and the valid/test splits are the dataset's own; the new data-bin,
``DATA_ROOT/DATA.seqkd-TEACHER``, is what ``train DATASET METHOD SEED --data-variant seqkd:RUN``
reads. A finished data-bin is kept unless ``--force``.
"""

import argparse
import datetime
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.commandline import ArgumentParser, split_extra
from labo_fairseq.runtime.errors import ToolError, UsageError, usage_errors
from labo_fairseq.runtime.files import atomic_open, write_json, write_lines
from labo_fairseq.runtime.processes import cuda_visible
from labo_fairseq.study.fairseq_tools import generate_command, parse_generate, preprocess, run_generate, split_size
from labo_fairseq.study.kd import runs as kd_runs
from labo_fairseq.study.protocol import Roots, add_root_arguments, dataset_config, names

MANIFEST = "distill.json"
WORK = ".distill"


class DistillError(UsageError):
    """Missing inputs, an existing output, a failed or incomplete translation; the message says which."""


def shard_file(work: Path, k: int, n: int) -> Path:
    return work / f"shard-{k:04d}-of-{n:04d}.txt"


def shard_command(data: Path, checkpoint: Path, src: str, tgt: str, shard: int, shards: int, batch_size: int,
                  cpu: bool, extra: Sequence[str]) -> List[str]:
    """fairseq-generate of one shard of the training set: beam 5, BPE kept (the output is binarized again)."""
    # fairseq-generate shards its batches by the distributed world size and rank
    sharding = ["--distributed-world-size", str(shards), "--distributed-rank", str(shard)] if shards > 1 else []
    return generate_command(data, checkpoint, "train", 5, batch_size=batch_size, remove_bpe=None,
                            task_args=["--nbest", "1", "--source-lang", src, "--target-lang", tgt, *sharding],
                            cpu=cpu, extra=extra)


def preprocess_args(data: Path, out: Path, work: Path, src: str, tgt: str, workers: int) -> List[str]:
    return ["--source-lang", src, "--target-lang", tgt, "--trainpref", str(work / "train"),
            "--srcdict", str(data / f"dict.{src}.txt"), "--tgtdict", str(data / f"dict.{tgt}.txt"),
            "--destdir", str(out), "--workers", str(workers)]


def _link_or_copy(a: Path, b: Path) -> None:
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


@dataclass(frozen=True)
class DistillPlan:
    """What a distillation reads and writes: the teacher's checkpoint, the data-bin, the new one, the commands."""

    teacher: kd_runs.Teacher
    checkpoint: Path
    data: Path
    out: Path  # the new data-bin
    work: Path  # its shard outputs and text, kept until it is finished
    src: str
    tgt: str
    cpu: bool
    cmds: Dict[int, List[str]]  # shard -> fairseq-generate command


def plan_distillation(o: "DistillOptions") -> DistillPlan:
    ds = dataset_config(o.dataset)
    roots = Roots.from_options(o.root, data=o.data_root, runs=o.runs_root)
    if "source_lang" not in ds:
        raise DistillError(f"{o.dataset}: sequence-level distillation is for bilingual datasets")
    src, tgt = ds["source_lang"], ds["target_lang"]
    teacher = kd_runs.resolve_teacher(o.teacher, roots.runs, o.dataset)
    ck = Path(o.checkpoint) if o.checkpoint not in ("best", "last") else teacher.checkpoint(o.checkpoint)
    data = roots.data_bin / ds["data"]
    out = roots.data_bin / kd_runs.seqkd_data_name(ds["data"], teacher)
    cpu = o.cpu or not cuda_visible(probe_torch=not o.dry_run)
    cmds = {k: shard_command(data, ck.absolute(), src, tgt, k, o.shards, o.batch_size, cpu, o.generate_args)
            for k in range(o.shards)}
    return DistillPlan(teacher, ck, data, out, out / WORK, src, tgt, cpu, cmds)


def distill(o: "DistillOptions") -> int:
    p = plan_distillation(o)
    if o.dry_run:
        if (p.out / MANIFEST).exists():
            print(f"# {p.out} is finished: " + ("--force would rebuild it" if o.force else "nothing to do"))
        for k, cmd in p.cmds.items():
            print(shlex.join(cmd) + f" > {shard_file(p.work, k, o.shards)}")
        print(shlex.join(["fairseq-preprocess", *preprocess_args(p.data, p.out, p.work, p.src, p.tgt, o.workers)]))
        return 0
    n_train = _check_inputs(o, p)
    p.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _translate(o, p, n_train)
    hyp = _gather(o, p, n_train)
    _binarize(o, p)
    empty = sum(1 for i in range(n_train) if not hyp[i].strip())
    manifest = {
        "dataset": o.dataset, "data": str(p.data), "data_bin": str(p.out), "teacher": p.teacher.record(),
        "checkpoint": str(p.checkpoint), "beam": 5, "shards": o.shards, "sentences": n_train, "empty_hypotheses": empty,
        "generate": p.cmds[0], "device": "cpu" if p.cpu else "cuda", "wall_s": round(time.time() - t0, 1),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "valid_test": "the dataset's own valid/test splits (linked or copied)",
    }
    write_json(p.out / MANIFEST, manifest)
    print(f"distill-data: wrote {p.out} ({n_train} sentences, {empty} empty translations)", file=sys.stderr)
    return 0


def _check_inputs(o: "DistillOptions", p: DistillPlan) -> int:
    """The training set's size, once the inputs are there and a finished output may be replaced
    (``--force``: it is deleted here); :class:`DistillError` otherwise."""
    if (p.out / MANIFEST).exists():
        if not o.force:
            raise DistillError(f"{p.out} is finished (see {MANIFEST}); --force to translate and binarize again")
        shutil.rmtree(p.out)
    elif o.force and p.out.exists() and not p.work.is_dir():
        raise DistillError(f"{p.out} was not made by this command; not deleting it")
    if not p.checkpoint.is_file():
        raise DistillError(f"{p.checkpoint}: no such teacher checkpoint (train the teacher first, or --checkpoint "
                           "last|PATH)")
    if not p.data.is_dir():
        raise DistillError(f"{p.data}: no such data-bin directory (labo-fairseq prepare; --data-root)")
    try:
        return split_size(p.data, "train", p.src, p.tgt)
    except FileNotFoundError as err:
        raise DistillError(str(err)) from None


def _translate(o: "DistillOptions", p: DistillPlan, n_train: int) -> None:
    """Each shard not yet translated, its output kept once complete."""
    for k, cmd in p.cmds.items():
        path = shard_file(p.work, k, o.shards)
        if path.is_file():
            print(f"distill-data: shard {k + 1}/{o.shards} already translated ({path.name})", file=sys.stderr)
            continue
        print(f"distill-data: translating shard {k + 1}/{o.shards} of {n_train} training sentences", file=sys.stderr)
        try:
            proc = run_generate(cmd, what=f"fairseq-generate (shard {k})")
        except ToolError as err:
            raise DistillError(str(err)) from None
        with atomic_open(path) as f:  # a shard counts as done only once complete
            f.write(proc.stdout)


def _gather(o: "DistillOptions", p: DistillPlan, n_train: int) -> Dict[int, str]:
    """The shards' sources and hypotheses, every training sentence checked, written as the new
    training text; the hypotheses by sentence id."""
    source: Dict[int, str] = {}
    hyp: Dict[int, str] = {}
    for k in range(o.shards):
        g = parse_generate(shard_file(p.work, k, o.shards).read_text(encoding="utf-8"))
        source.update(g.source)
        hyp.update(g.hypothesis)
    if sorted(hyp) != list(range(n_train)) or sorted(source) != list(range(n_train)):
        raise DistillError(f"the teacher translated {len(hyp)} of {n_train} training sentences "
                           f"(shard outputs in {p.work}; delete the incomplete ones and run again)")
    write_lines(p.work / f"train.{p.src}", (source[i] for i in range(n_train)))
    write_lines(p.work / f"train.{p.tgt}", (hyp[i] for i in range(n_train)))
    return hyp


def _binarize(o: "DistillOptions", p: DistillPlan) -> None:
    """The new training text binarized with the dataset's dictionaries; its valid/test splits beside it."""
    for f in p.out.glob("train.*"):  # a binarization interrupted earlier
        f.unlink()
    try:
        preprocess(preprocess_args(p.data, p.out, p.work, p.src, p.tgt, o.workers))
    except ToolError as err:
        raise DistillError(str(err)) from None
    for f in sorted(p.data.iterdir()):
        if f.name.startswith(("valid", "test")) and f.suffix in (".bin", ".idx") and not (p.out / f.name).exists():
            _link_or_copy(f, p.out / f.name)


@dataclass(frozen=True)
class DistillOptions:
    """``labo-fairseq distill-data``'s options (see :func:`main`'s parser)."""

    dataset: str
    teacher: str
    checkpoint: str = "best"
    root: Optional[Path] = None
    data_root: Optional[Path] = None
    runs_root: Optional[Path] = None
    shards: int = 8
    batch_size: int = 128
    workers: int = 1
    cpu: bool = False
    force: bool = False
    dry_run: bool = False
    generate_args: Tuple[str, ...] = ()


def main(argv=None, prog="labo-fairseq distill-data") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help=f"one of: {', '.join(names('datasets'))}")
    ap.add_argument("teacher", metavar="RUN", help="the teacher run: METHOD[-tauT]/seedS under RUNS/DATASET, or a run directory")
    ap.add_argument("--checkpoint", default="best", help="the teacher's checkpoint: best (default), last, or a path")
    add_root_arguments(ap, "data", "runs")
    ap.add_argument("--shards", type=int, default=8, help="pieces translated (and kept) one at a time (default 8)")
    ap.add_argument("--batch-size", type=int, default=128, help="sentences per decoding batch (default 128)")
    ap.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    ap.add_argument("--cpu", action="store_true", help="decode on CPU even if a GPU is there")
    ap.add_argument("--force", action="store_true", help="replace a finished distilled data-bin")
    ap.add_argument("--dry-run", action="store_true", help="print the fairseq commands, run nothing")
    ap.epilog = "Extra fairseq-generate flags go after --, e.g. -- --max-len-b 50 (recorded in distill.json)."
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = split_extra(argv)
    a = ap.parse_args(own)
    for flag, v in (("--shards", a.shards), ("--batch-size", a.batch_size), ("--workers", a.workers)):
        if v < 1:
            ap.error(f"{flag} must be >= 1, got {v}")
    with usage_errors():
        return distill(DistillOptions(**vars(a), generate_args=tuple(extra)))
