"""What every command line shares: one-line argparse errors, errors as exit status, the tool's
arguments after ``--``, inputs checked before anything starts."""

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Type

from labo_fairseq.runtime.files import overwrite_refusal


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (the usage is ``--help``'s), as every error here."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


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


def split_extra(argv: Sequence[str]) -> "tuple[List[str], List[str]]":
    """A command's own arguments and the tool's after the first ``--`` (``[]`` without one)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
