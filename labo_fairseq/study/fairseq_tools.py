"""Running fairseq's own tools for the study: their command lines, fairseq-generate in this process,
its output parsed, a data-bin's split sizes, fairseq-train's log records and validation curve."""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.errors import ToolError
from labo_fairseq.runtime.files import read_lines
from labo_fairseq.runtime.processes import run_tool

USER_DIR = Path(__file__).resolve().parents[1]  # the labo_fairseq package: fairseq's --user-dir


def fairseq_command(tool: str) -> List[str]:
    """How to start ``fairseq-TOOL`` with this interpreter's fairseq: its console script beside
    ``sys.executable`` (what a user would type), else what that script runs. Not ``python -m
    fairseq_cli.TOOL``: its module would run as ``__main__``, out of reach of the plugin's fixes to
    ``fairseq_cli.TOOL`` (the patience carried across a resume)."""
    exe = Path(sys.executable).parent / f"fairseq-{tool}"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", f"import sys; from fairseq_cli.{tool} import cli_main; sys.exit(cli_main())"]


def generate_command(data: Path, checkpoint: Path, subset: str = "test", beam: int = 5,
                     batch_size: Optional[int] = None, max_tokens: Optional[int] = None,
                     remove_bpe: Optional[str] = "subword_nmt", task_args: Sequence[str] = (), cpu: bool = True,
                     extra: Sequence[str] = ()) -> List[str]:
    """The ``fairseq-generate`` command line, through the plugin (so every sentence is translated):
    ``--remove-bpe`` is ``subword_nmt`` (``@@ ``), ``sentencepiece`` or None (BPE kept); fp16 on GPU."""
    cmd = [*fairseq_command("generate"), str(data), "--user-dir", str(USER_DIR), "--path", str(checkpoint),
           "--gen-subset", subset, "--beam", str(beam)]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    if max_tokens is not None:
        cmd += ["--max-tokens", str(max_tokens)]
    cmd += (["--remove-bpe", remove_bpe] if remove_bpe else []) + list(task_args)
    return cmd + (["--cpu"] if cpu else ["--fp16"]) + [str(e) for e in extra]


@dataclass
class Generation:
    """Parsed fairseq-generate output: per sentence id, source/reference/hypothesis and token scores."""

    source: Dict[int, str] = field(default_factory=dict)
    reference: Dict[int, str] = field(default_factory=dict)
    hypothesis: Dict[int, str] = field(default_factory=dict)
    detok: Dict[int, str] = field(default_factory=dict)
    positional_scores: Dict[int, List[float]] = field(default_factory=dict)  # log2 p per output token (EOS last)
    bleu_line: Optional[str] = None

    def ordered(self, which: Dict[int, str]) -> List[str]:
        return [which[i] for i in sorted(which)]


def parse_generate(text: str) -> Generation:
    """The S/T/H/D/P lines and the BLEU line of fairseq-generate's output."""
    g = Generation()
    for line in text.splitlines():
        m = re.match(r"^([STHDP])-(\d+)\t(.*)$", line)
        if m:
            kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "S":
                g.source[idx] = rest
            elif kind == "T":
                g.reference[idx] = rest
            elif kind == "H":
                g.hypothesis[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
            elif kind == "D":
                g.detok[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
            else:
                g.positional_scores[idx] = [float(x) for x in rest.split()]
        elif line.startswith("Generate ") and "BLEU" in line:
            g.bleu_line = line.strip()
    return g


def preprocess(args: Sequence[str]) -> None:
    """``fairseq-preprocess ARGS`` (the running interpreter's fairseq); :class:`ToolError` if it fails."""
    print("+ fairseq-preprocess " + " ".join(map(str, args)), file=sys.stderr)
    run_tool([*fairseq_command("preprocess"), *map(str, args)], what="fairseq-preprocess")


def run_generate(cmd: Sequence[str], what: str = "fairseq-generate", cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """A :func:`generate_command` line run by fairseq's ``generate`` in this process (in ``cwd``),
    its stdout and stderr captured as a child's would be (fairseq's log on stdout);
    :class:`ToolError` with the output's end if it fails. In-process because importing torch and
    fairseq costs seconds of CPU per start, paid once for all the test sets of an evaluation
    instead of once per set."""
    import io as pyio
    import logging
    import traceback
    from contextlib import redirect_stderr, redirect_stdout

    cmd = [str(c) for c in cmd]
    prefix = fairseq_command("generate")
    if cmd[:len(prefix)] != prefix:
        raise ValueError(f"not a fairseq-generate command line: {shlex.join(cmd[:3])} ...")
    from fairseq import options
    from fairseq_cli import generate as fairseq_generate

    from labo_fairseq.plugin import register

    register()
    out, err = pyio.StringIO(), pyio.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.handlers[:] = []  # so that generate's logging.basicConfig logs to the captured stdout, as in a child
    rc, here = 0, os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            parser = options.get_generation_parser()
            parser.add_argument("--arch", "-a", metavar="ARCH", default="wav2vec2")  # as fairseq-generate's cli_main
            fairseq_generate.main(options.parse_args_and_arch(parser, input_args=cmd[len(prefix):]))
    except SystemExit as stop:  # argparse's errors
        rc = stop.code if isinstance(stop.code, int) else 1
    except Exception:  # (reported with the command's output, as a child's failure is)
        err.write(traceback.format_exc())
        rc = 1
    finally:
        os.chdir(here)
        root.handlers[:] = handlers
        root.setLevel(level)
    if rc != 0:
        raise ToolError(f"{what} failed (exit {rc}):\n{(out.getvalue() + err.getvalue())[-3000:]}")
    return subprocess.CompletedProcess(cmd, rc, out.getvalue(), err.getvalue())


def generate(cmd: Sequence[str]) -> Generation:
    """Run a :func:`generate_command` (:func:`run_generate`) and parse it (the BLEU line may be on either stream)."""
    proc = run_generate(cmd)
    return parse_generate(proc.stdout + "\n" + proc.stderr)


def split_size(data: Path, split: str, src: str, tgt: str) -> int:
    """Sentences in the binarized ``split`` of a data-bin (``SPLIT.SRC-TGT.SRC`` or ``SPLIT.TGT-SRC.SRC``),
    read by fairseq as training reads it; FileNotFoundError naming the files where there is none."""
    import logging

    from fairseq.data import data_utils

    logging.getLogger("fairseq.data.data_utils").setLevel(logging.WARNING)  # not one "loaded N examples" line a set
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        ds = data_utils.load_indexed_dataset(str(Path(data) / f"{split}.{pair}.{src}"), None)
        if ds is not None:
            return len(ds)
    raise FileNotFoundError(f"{data}: no binarized {split} split for {src}-{tgt} ({split}.{src}-{tgt}.{src}.bin)")


def saved_in_epoch(iterator: Dict) -> Optional[int]:
    """The epoch a checkpoint was saved in (1-based). fairseq stores the iterator's state to resume
    from: after a finished epoch that is the *next* epoch with 0 iterations done, so the end of
    epoch 45 is stored as ``{"epoch": 46, "iterations_in_epoch": 0}``; mid-epoch, the epoch itself."""
    epoch = iterator.get("epoch")
    if epoch is None:
        return None
    return epoch - 1 if iterator.get("iterations_in_epoch", 0) == 0 and epoch > 1 else epoch


def checkpoint_state(path: Path) -> Dict:
    """Updates, epoch, training wall time and validation metric stored in a fairseq checkpoint."""
    import torch

    from labo_fairseq.plugin import register

    register()  # checkpoint allow-list (and criteria)

    # torch < 2.6 loads in full by default, as fairseq 0.12 loads the same file there; its weights_only
    # loader cannot build the numpy objects (--eval-bleu's state) a checkpoint holds
    state = torch.load(path, map_location="cpu", weights_only=torch.__version__ >= "2.6", mmap=True)
    extra = state.get("extra_state") or {}
    cfg = state.get("cfg") or {}
    ck_cfg = cfg.get("checkpoint") if hasattr(cfg, "get") else None
    val = extra.get("val_loss")
    return {
        "updates": (state.get("optimizer_history") or [{}])[-1].get("num_updates"),
        "epoch": saved_in_epoch(extra.get("train_iterator") or {}),
        "train_wall_s": round(float(extra["previous_training_time"]), 1) if "previous_training_time" in extra else None,
        "valid_metric": ck_cfg.get("best_checkpoint_metric") if ck_cfg is not None else None,
        "valid_value": None if val is None else float(val),
    }


# fairseq's --log-format json record: "... | INFO | KIND | {...}" (fairseq's logging format) or
# "INFO:KIND:{...}" (Python's default one, when fairseq runs in a process that set up logging first)
_LOG_RECORD = re.compile(r"(?:^|[|:])\s*(train_inner|train|valid)\s*[|:]\s*(\{.*\})")


def log_record(line: str) -> Optional[Tuple[str, Dict]]:
    """A fairseq-train log line's json record (``--log-format json``): its kind (``train_inner``,
    ``train`` or ``valid``) and the dict; None for any other line or a record cut short."""
    import json

    m = _LOG_RECORD.search(line)
    if not m:
        return None
    try:
        rec = json.loads(m.group(2))
    except ValueError:
        return None
    return (m.group(1), rec) if isinstance(rec, dict) else None


def validation_curve(train_log: Path) -> List[Dict]:
    """fairseq-train's validations (``--log-format json``), in order: epoch, updates and every
    ``valid_*`` value (``valid_`` dropped; ``nll_loss`` in bits, as fairseq logs it). The run as it
    stands: a resumed process goes back to its checkpoint and validates again, and its validation
    replaces those logged at as many updates or more before the stop (whose state was not saved;
    fairseq 0.12 logs the updates of every validation)."""
    out: List[Dict] = []
    if not Path(train_log).is_file():
        return out
    for line in read_lines(train_log):
        found = log_record(line)
        if found is None or found[0] != "valid":
            continue
        rec = found[1]
        row = {"epoch": rec.get("epoch")}
        for k, v in rec.items():
            if k.startswith("valid_"):
                try:
                    row[k[len("valid_"):]] = float(v)
                except (TypeError, ValueError):
                    row[k[len("valid_"):]] = v
        if "num_updates" in row:
            row["updates"] = int(row.pop("num_updates"))
        while out and "updates" in row and out[-1].get("updates", -1) >= row["updates"]:
            out.pop()
        out.append(row)
    return out
