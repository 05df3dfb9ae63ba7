"""Processes: the one way the package starts one (:class:`Child`), runs a queue of them, runs one to
completion, reads a short command's output, and stops them (SIGTERM, then SIGKILL)."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from labo_fairseq.runtime.errors import ToolError

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
                 env: Optional[Dict[str, str]] = None, echo: Echo = False, keep_fds: Sequence[int] = ()):
        self.cmd, self.log = [str(c) for c in cmd], Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", pass_fds=tuple(keep_fds))
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


def thread_env(threads: Optional[int]) -> Dict[str, str]:
    """This process's environment, with torch's CPU threads set to ``threads`` (None: unchanged)."""
    return {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}


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


def output_of(cmd: Sequence[str], cwd: Optional[Path] = None, timeout: Optional[float] = None) -> Optional[str]:
    """The stdout of a short command (git, nvidia-smi, squeue): None when the program is missing,
    fails or runs past ``timeout`` s; its stderr is dropped."""
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def python_value(code: str):
    """The JSON value that ``python -c CODE`` prints on its last line, run in a fresh interpreter of
    this Python (a clean process to measure, e.g. its peak memory); :class:`ToolError` with the end of
    its stderr if it fails."""
    from labo_fairseq.runtime.errors import InvalidFile
    from labo_fairseq.runtime.files import parse_json

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ToolError(f"a child interpreter failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    try:
        return parse_json(lines[-1], "a child interpreter's output")
    except InvalidFile as err:  # the child misbehaved, not a file of the user's
        raise ToolError(str(err)) from None


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def run_logged(processes: Sequence[Sequence[str]], logs: Sequence[Path], cwd: Optional[Path] = None,
               echo: Echo = True, env: Optional[Dict[str, str]] = None, keep_fds: Sequence[int] = ()) -> int:
    """Start every process (the first echoed to the terminal), each appending to its log; if one
    fails, stop the others. Returns the first non-zero exit status, else 0. Ctrl-C or SIGTERM (a
    scheduler's preemption) stops the processes too, so none is left running alone. ``keep_fds``:
    descriptors the processes inherit (a lock they hold on if this process is killed)."""
    # The handler comes first: a SIGTERM between two starts must stop those already started.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    children: List[Child] = []
    status = 0
    try:
        for i, (cmd, log) in enumerate(zip(processes, logs)):
            children.append(Child(cmd, log, cwd=cwd, env=env, echo=echo if i == 0 else False, keep_fds=keep_fds))
        while None in [c.poll() for c in children]:  # a list, not any(): every process is polled
            failed = [c.returncode for c in children if c.returncode not in (None, 0)]
            if failed and not status:  # the first failure's, not that of a rank stopped because of it
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
