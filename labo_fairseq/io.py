"""Generic I/O, below every command: atomic files, lines, and starting fairseq's tools.

Nothing here knows about datasets, methods or runs; :mod:`labo_fairseq.protocol` and the commands
build on it.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple, Type, Union

from labo_fairseq.errors import InvalidFile, ToolError  # noqa: F401  (re-exported: callers catch them here)

USER_DIR = Path(__file__).resolve().parent  # the labo_fairseq package: fairseq's --user-dir


# ------------------------------------------------------------------------------------- files


@contextmanager
def atomic_open(path: Path) -> Iterator[TextIO]:
    """A UTF-8 text file written as ``path.tmp`` and renamed to ``path`` only when the block
    completes: a reader never sees a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        yield f
    tmp.replace(path)


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write lines atomically (:func:`atomic_open`); returns the line count."""
    n = 0
    with atomic_open(path) as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def write_json(path: Path, obj, indent: Optional[int] = 1, default=None) -> Path:
    """``obj`` as JSON (indented; ``indent=None``: one compact line; ``default``: as json.dumps's),
    written atomically (:func:`atomic_open`)."""
    import json

    with atomic_open(path) as f:
        f.write(json.dumps(obj, indent=indent, separators=None if indent else (",", ":"), default=default) + "\n")
    return Path(path)


def read_json(path: Path):
    """The JSON in ``path``: the one reader; :class:`InvalidFile` naming the file when it is missing
    or not valid JSON (e.g. truncated)."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidFile(f"{path}: no such file") from None
    except ValueError as err:
        raise InvalidFile(f"{path} is not valid JSON ({err}); restore it, or delete it to redo its step") from None


def read_lines(path: Path) -> List[str]:
    """Lines without their ``\\n``; only ``\\n`` ends a line (a ``\\r`` inside text is kept)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    return text.split("\n")[:-1] if text.endswith("\n") else (text.split("\n") if text else [])


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def require_inputs(ap, dirs: Sequence = (), files: Sequence = (), output: Optional[Path] = None,
                   force: bool = False) -> None:
    """Stop a command with a message naming the first missing input, or its ``output`` where that
    exists and not ``force`` (:func:`overwrite_refusal`); argparse exits with 2."""
    for d in dirs:
        if not Path(d).is_dir():
            ap.error(f"{d}: no such directory")
    for f in files:
        if f is not None and not Path(f).is_file():
            ap.error(f"{f}: no such file")
    refusal = overwrite_refusal(output, force) if output is not None else None
    if refusal:
        ap.error(refusal)


def report_errors(prog: str, fn: Callable[[], int], *errors: Type[BaseException]) -> int:
    """``fn()``; where it raises one of ``errors`` (bad input, named in the message), ``PROG: error:
    MESSAGE`` on stderr and exit status 2 instead of a traceback."""
    try:
        return fn()
    except errors as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------- fairseq's tools


def fairseq_command(tool: str) -> List[str]:
    """How to start ``fairseq-TOOL`` with this interpreter's fairseq: its console script beside
    ``sys.executable`` (what a user would type), else ``python -m fairseq_cli.TOOL``."""
    exe = Path(sys.executable).parent / f"fairseq-{tool}"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-m", f"fairseq_cli.{tool}"]


Echo = Union[bool, Callable[[str], Optional[str]]]


def _stream(proc: subprocess.Popen, log_path: Path, echo: Echo) -> None:
    """Append the output to the log; echo each line (``True``) or what ``echo(line)`` makes of it."""
    with open(log_path, "a", encoding="utf-8") as log:
        for line in proc.stdout:
            shown = line if echo is True else echo(line) if echo else None
            if shown:
                sys.stdout.write(shown)
                sys.stdout.flush()
            log.write(line)
            log.flush()


class Child:
    """A process started through this module, the one way the package starts one: stdout and stderr
    appended to ``log`` by a thread (echoed too with ``echo``), so that no pipe fills up and a
    failure can be reported with the end of its output."""

    def __init__(self, cmd: Sequence, log: Path, cwd: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None, echo: Echo = False):
        self.cmd, self.log = [str(c) for c in cmd], Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self._thread = threading.Thread(target=_stream, args=(self.proc, self.log, echo), daemon=True)
        self._thread.start()

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        rc = self.proc.wait(timeout)
        self._thread.join()  # the log is complete once the pipe is drained
        return rc

    def terminate(self) -> None:
        """SIGTERM, which fairseq and the project's commands handle (checkpoint_last.pt stays)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:] if self.log.is_file() else ""

    def failure(self, what: str = "", chars: int = 3000) -> str:
        """'NAME failed (exit N) (log: LOG):' and the end of the output."""
        name = what or " ".join(Path(c).name if i == 0 else c for i, c in enumerate(self.cmd[:4]))
        return f"{name} failed (exit {self.returncode}) (log: {self.log}):\n{self.tail(chars)}"


def stop(children: Iterable[Child], grace: float = 60.0) -> None:
    """Stop every child still running: SIGTERM to all, then SIGKILL to those alive after ``grace`` s."""
    children = list(children)
    for c in children:
        c.terminate()
    for c in children:
        try:
            c.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.wait()


def run_queue(jobs: Sequence[Tuple[object, Sequence[str], Path]], parallel: int, time_left: Callable[[], float],
              on_done: Callable[[object], bool], env: Optional[Dict[str, str]] = None,
              interrupted: Callable[[], bool] = lambda: False,
              poll_s: float = 2.0) -> "tuple[bool, List[Tuple[object, Child]]]":
    """Run ``jobs`` (key, command, log), ``parallel`` at a time, starting one only while
    ``time_left()`` > 0; ``on_done(key)`` after each that exits 0 (False: count it as failed). When
    time runs out the running ones are stopped (SIGTERM: they resume next time). Returns whether every
    job ran, and the failed ones with their processes; a job ended while ``interrupted()`` (a SIGTERM
    sent to the whole process group) is not a failure."""
    todo, running, failed = list(jobs), [], []
    try:
        while todo or running:
            while todo and len(running) < parallel and time_left() > 0:
                key, cmd, log = todo.pop(0)
                running.append((key, Child(cmd, log, env=env)))
            for item in [x for x in running if x[1].poll() is not None]:
                running.remove(item)
                item[1].wait()
                if item[1].returncode == 0 and on_done(item[0]):
                    continue
                if not interrupted():
                    failed.append(item)
            if time_left() <= 0:
                break
            if running or todo:
                time.sleep(poll_s)
    finally:
        stop([child for _, child in running])
    return not todo and not running, failed


def run_tool(cmd: Sequence[str], cwd: Optional[Path] = None, what: str = "", log: Optional[Path] = None,
             env: Optional[Dict[str, str]] = None, check: bool = True, append: bool = False,
             echo: bool = False) -> subprocess.CompletedProcess:
    """Run one command to completion (a :class:`Child`), its output written to ``log`` (stderr
    included; ``append``: after what is there; without ``log``, captured and returned as
    ``stdout``); :class:`ToolError` with the output's end if it fails and ``check``. An exception
    here (Ctrl-C) stops the command too."""
    import tempfile

    if log is not None and not append:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text("", encoding="utf-8")  # this run's output only
    with tempfile.TemporaryDirectory(prefix="labo-tool-") as tmp:
        child = Child(cmd, Path(log) if log is not None else Path(tmp) / "output.log", cwd=cwd, env=env, echo=echo)
        try:
            rc = child.wait()
        finally:
            stop([child])
        text = child.log.read_text(encoding="utf-8", errors="replace")
        if check and rc != 0:
            message = child.failure(what)
            raise ToolError(message if log is not None else message.replace(f" (log: {child.log})", ""))
    return subprocess.CompletedProcess(child.cmd, rc, text, "")


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def run_logged(processes: Sequence[Sequence[str]], logs: Sequence[Path], cwd: Optional[Path] = None,
               echo: Echo = True) -> int:
    """Start every process (the first echoed to the terminal), each appending to its log; if one
    fails, stop the others. Returns the first non-zero exit status, else 0. Ctrl-C or SIGTERM (a
    scheduler's preemption) stops the processes too, so none is left running alone."""
    # The handler comes first: a SIGTERM between two starts must stop those already started.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    children: List[Child] = []
    status = 0
    try:
        for i, (cmd, log) in enumerate(zip(processes, logs)):
            children.append(Child(cmd, log, cwd=cwd, echo=echo if i == 0 else False))
        while None in [c.poll() for c in children]:  # a list, not any(): every process is polled
            failed = [c.returncode for c in children if c.returncode not in (None, 0)]
            if failed:
                status = failed[0]
                for c in children:
                    c.terminate()
            time.sleep(0.2)
    except _Terminated:
        stop(children, grace=30)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        stop(children, grace=30)  # Ctrl-C, or any error here: no child left running alone
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status or next((c.returncode for c in children if c.returncode), 0)


def cuda_visible(probe_torch: bool = True) -> bool:
    """Whether a CUDA device is usable. With ``probe_torch=False`` (``--dry-run``, which must not
    import torch) it is read off the NVIDIA driver and ``CUDA_VISIBLE_DEVICES`` instead."""
    if probe_torch or "torch" in sys.modules:
        import torch

        return torch.cuda.is_available()
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") and shutil.which("nvidia-smi") is not None


# --------------------------------------------------------------------------- fairseq-generate


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

    import labo_fairseq

    labo_fairseq.register()
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
    except Exception:  # noqa: BLE001 (reported with the command's output, as a child's failure is)
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


def validation_curve(train_log: Path) -> List[Dict]:
    """fairseq-train's validations (``--log-format json``), in order: epoch, updates and every
    ``valid_*`` value (``valid_`` dropped; ``nll_loss`` in bits, as fairseq logs it)."""
    import json

    out: List[Dict] = []
    if not Path(train_log).is_file():
        return out
    for line in read_lines(train_log):
        if "| valid |" not in line or "{" not in line:
            continue
        try:
            rec = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        row = {"epoch": rec.get("epoch")}
        for k, v in rec.items():
            if k.startswith("valid_"):
                try:
                    row[k[len("valid_"):]] = float(v)
                except (TypeError, ValueError):
                    row[k[len("valid_"):]] = v
        if "num_updates" in row:
            row["updates"] = int(row.pop("num_updates"))
        out.append(row)
    return out


def split_extra(argv: Sequence[str]) -> "tuple[List[str], List[str]]":
    """A command's own arguments and the tool's after the first ``--`` (``[]`` without one)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it (results name files so, to be read on
    another machine), else as given."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def check_checkpoint(path: Path) -> None:
    """:class:`InvalidFile` when ``path`` is a torch zip checkpoint cut short (an interrupted copy or
    save): caught before fairseq, whose traceback would end in torch's advice about ``weights_only``."""
    import zipfile

    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise InvalidFile(f"{path} is truncated or damaged (an incomplete checkpoint archive): train again, "
                          "or restore the file")


def overwrite_refusal(path: Path, force: bool) -> Optional[str]:
    """Why ``path`` may not be written (it exists and ``--force`` was not given), else None: no
    command overwrites a finished output without ``--force``."""
    if Path(path).exists() and not force:
        return f"{path} exists; --force to replace it (a finished output is kept)"
    return None
