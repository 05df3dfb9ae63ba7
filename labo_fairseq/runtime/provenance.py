"""Where a number came from: the code's commit and the hardware, recorded beside every result."""

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from labo_fairseq.runtime.files import relative
from labo_fairseq.runtime.processes import output_of

PACKAGE = Path(__file__).resolve().parents[1]


def git_state() -> Dict:
    """The plugin checkout's commit and whether tracked files differ from it; for an installed
    (non-checkout) package, commit and dirty are None (the commit is ``LABO_COMMIT`` where that is
    set, for a copy carried without .git) and the version says which release it is."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("labo-fairseq")
    except PackageNotFoundError:  # a copy on PYTHONPATH, not installed
        __version__ = None

    def git(*args) -> Optional[str]:
        out = output_of(["git", *args], cwd=PACKAGE)
        return out.strip() if out is not None else None

    top = git("rev-parse", "--show-toplevel")
    # the package inside someone else's repository is no checkout of it
    ours = top is not None and (Path(top).resolve() / "labo_fairseq").resolve() == PACKAGE
    commit = git("rev-parse", "HEAD") if ours else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit is not None else None
    if status is not None:
        state = {"commit": commit, "dirty": bool(status)}
    else:
        # a copy without .git (carried to an offline node): the commit its carrier named, if any
        commit = os.environ.get("LABO_COMMIT") or None
        state = {"commit": commit, "dirty": None, **({"commit_from": "LABO_COMMIT"} if commit else {})}
    return {**state, "version": __version__}


def nvidia_driver() -> Optional[str]:
    """The NVIDIA driver version that ``nvidia-smi`` reports, or None where there is none."""
    out = output_of(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=60)
    lines = out.strip().splitlines() if out is not None else []
    return lines[0].strip() if lines else None


def torch_build() -> Dict:
    """torch's ``__version__`` and ``version.cuda``, read from its ``version.py`` without importing
    torch (seconds of CPU at every start of a command that only records them)."""
    import importlib.util
    import runpy

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torch is not installed")
    v = runpy.run_path(str(Path(next(iter(spec.submodule_search_locations))) / "version.py"))
    return {"torch": v["__version__"], "cuda": v.get("cuda")}


def hardware() -> Dict:
    """What this process runs on: CPU model and cores, GPUs, torch and CUDA versions. torch is
    imported only where a GPU may be visible (or it is loaded already)."""
    from labo_fairseq.runtime.processes import cuda_visible

    if "torch" in sys.modules or cuda_visible(probe_torch=False):
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        build = {"torch": torch.__version__, "cuda": torch.version.cuda}
    else:
        gpus, build = [], torch_build()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count(), "gpus": gpus,
            **build, "python": platform.python_version()}


def portable(arg) -> str:
    """An argument as a record shows it on any machine: a path under the working directory relative
    to it, one under the home directory from ``~/``, anything else as given."""
    arg = str(arg)
    if arg.startswith("/"):
        for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
            rel = relative(Path(arg), base)
            if not rel.startswith("/"):
                return prefix + rel
    return arg


def record(prog: str, argv: Optional[Sequence[str]] = None, with_hardware: bool = True) -> Dict:
    """The command that made an output (``prog`` and its arguments, ``sys.argv[1:]`` when None; paths
    :func:`portable`, so relative ones are to the directory it ran in), its date, the commit
    (:func:`git_state`) and, unless ``with_hardware`` is False (text-only commands: no torch
    import), the hardware."""
    args = list(sys.argv[1:] if argv is None else argv)
    rec = {"command": " ".join([prog, *(shlex.quote(portable(a)) for a in args)]),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **git_state()}
    if with_hardware:
        rec["hardware"] = hardware()
    return rec
