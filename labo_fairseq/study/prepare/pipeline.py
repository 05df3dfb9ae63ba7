"""Resumable preparation steps: atomic outputs, step markers, refusal to clobber, the manifest."""

import datetime
import multiprocessing
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from labo_fairseq.runtime.errors import ToolError
from labo_fairseq.runtime.files import write_json
from labo_fairseq.study.fairseq_tools import preprocess

MARKER = ".labo_prepare"


class PrepareError(ToolError):
    pass


_worker_fn = None


def _init_worker(factory):
    global _worker_fn
    _worker_fn = factory()


def _apply_chunk(chunk):
    return [_worker_fn(line) for line in chunk]


def parallel_map(factory: Callable[[], Callable[[str], str]], lines: Sequence[str], workers: int,
                 desc: str = "", chunk: int = 2000) -> List[str]:
    """``[factory()(line) for line in lines]`` over ``workers`` processes, order kept, with progress."""
    chunks = [lines[i:i + chunk] for i in range(0, len(lines), chunk)]
    out: List[str] = []
    progress = _Progress(desc, len(lines))
    if workers <= 1 or len(chunks) <= 1:
        _init_worker(factory)
        for c in chunks:
            out += _apply_chunk(c)
            progress.update(len(c))
    else:
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(factory,)) as pool:
            for c, res in zip(chunks, pool.imap(_apply_chunk, chunks)):
                out += res
                progress.update(len(c))
    progress.close()
    return out


class _Progress:
    def __init__(self, desc: str, total: int):
        self.desc, self.total, self.done = desc, total, 0
        self.show = bool(desc) and total >= 20000

    def update(self, n: int):
        self.done += n
        if self.show:
            print(f"\r  {self.desc}: {self.done:,}/{self.total:,} lines", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.show:
            print(file=sys.stderr)


class Workspace:
    """One dataset's output directory. Steps whose marker exists are skipped; a finished directory
    (manifest written) is left alone unless ``force``; ``force`` only ever deletes directories this
    tool created (they hold the ``.labo_prepare`` marker)."""

    def __init__(self, root: Path, dest: Path, dataset: str, force: bool = False, dry_run: bool = False):
        self.root, self.dest, self.dataset, self.dry_run = Path(root), Path(dest), dataset, dry_run
        self.manifest_path = self.root / "manifest.json"
        for d in (self.root, self.dest):
            if d.exists() and any(d.iterdir()) and not (d / MARKER).exists() and not (self.root / MARKER).exists():
                raise PrepareError(f"{d} exists and was not made by this tool; choose another --out/--dest "
                                   f"or remove it yourself")
        if force and not dry_run:
            for d in (self.root, self.dest):
                if d.exists():
                    print(f"--force: removing {d}", file=sys.stderr)
                    shutil.rmtree(d)
        self.finished = self.manifest_path.exists()  # False after --force removed it
        if self.finished:
            print(f"{dataset}: already prepared ({self.manifest_path}); --force to rebuild")
        elif not dry_run:
            for d in (self.root, self.dest):
                d.mkdir(parents=True, exist_ok=True)
                write_json(d / MARKER, {"dataset": dataset}, indent=None)

    def step(self, name: str, fn: Callable[[], None]) -> None:
        marker = self.root / ".done" / name
        if self.dry_run:
            print(f"[dry-run] {name}: {fn.__doc__ or ''}".rstrip())
            return
        if marker.exists():
            print(f"[skip] {name} (done)", file=sys.stderr)
            return
        print(f"[run] {name}", file=sys.stderr)
        fn()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n")

    def write_manifest(self, data: Dict) -> None:
        write_json(self.manifest_path, data)


def tool_versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out = {}
    for pkg in ("sacremoses", "subword-nmt", "sentencepiece", "fairseq-fixed", "fairseq"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["python"] = sys.version.split()[0]
    return out


def fairseq_preprocess(args: Sequence[str]) -> None:
    """:func:`labo_fairseq.study.fairseq_tools.preprocess`, failing with :class:`PrepareError`."""
    try:
        preprocess(args)
    except ToolError as err:
        raise PrepareError(str(err)) from None
