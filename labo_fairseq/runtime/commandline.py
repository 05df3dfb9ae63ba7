"""What every command line shares: one-line argparse errors, the tool's arguments after ``--``,
inputs checked before anything starts."""

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

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


def split_extra(argv: Sequence[str]) -> "tuple[List[str], List[str]]":
    """A command's own arguments and the tool's after the first ``--`` (``[]`` without one)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
