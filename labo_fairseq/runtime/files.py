"""Files: written atomically, JSON written and read one way, lines, paths relative to a root, locks."""

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, TextIO

from labo_fairseq.runtime.errors import InUse, InvalidFile


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


def parse_json(text: str, what: str):
    """The JSON value in ``text``; :class:`InvalidFile` naming ``what`` if it is not valid JSON."""
    import json

    try:
        return json.loads(text)
    except ValueError as err:
        raise InvalidFile(f"{what} is not valid JSON ({err})") from None


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


def read_json_if_exists(path: Path, default=None):
    """:func:`read_json`, or ``default`` when there is no file at ``path`` (an invalid one is still
    :class:`InvalidFile`)."""
    return read_json(path) if Path(path).is_file() else default


def read_lines(path: Path) -> List[str]:
    """Lines without their ``\\n``; only ``\\n`` ends a line (a ``\\r`` inside text is kept)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    return text.split("\n")[:-1] if text.endswith("\n") else (text.split("\n") if text else [])


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


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


@contextmanager
def exclusive(directory: Path, what: str) -> Iterator[int]:
    """Hold a lock on ``directory`` (made if missing) while the block runs, yielding its descriptor:
    a child process given it holds the lock on after this one is killed. :class:`InUse` naming
    ``what`` if another process holds it. The kernel's lock (flock) on the directory itself: no lock
    file is left behind, and the lock ends with its last holder, even one killed."""
    import fcntl

    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse(f"{what} is in use by another process: let it finish, or stop it first") from None
        except OSError as err:  # a filesystem without flock (some cluster mounts): the work goes on unguarded
            warnings.warn(f"{directory} cannot be locked ({err.strerror}): a second process on it is not refused",
                          stacklevel=3)
        yield fd
    finally:
        os.close(fd)
