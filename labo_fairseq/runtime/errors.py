"""The errors a user can fix. Library code raises them; only the command line (:mod:`labo_fairseq.cli`)
turns them into one line on stderr and an exit status."""

from contextlib import contextmanager
from typing import Iterator


class LaboError(Exception):
    """An error stated in one line that names what is wrong and the fix; ``status``: the exit status."""

    status = 1


class UsageError(LaboError, ValueError):
    """Bad input: an argument, a value out of range, a missing or unusable input."""

    status = 2


class InvalidFile(UsageError):
    """A file that is missing or not what it should be (truncated JSON, a damaged checkpoint), named."""


class InUse(LaboError):
    """What another process is working on (a run it trains), named with that process."""


class ToolError(LaboError, RuntimeError):
    """A tool this package started (fairseq, a compiler) failed; the message ends with its output's tail."""


@contextmanager
def usage_errors() -> Iterator[None]:
    """A plain ValueError raised in the block as :class:`UsageError` (exit status 2): the checks of
    the layers below this one (``losses.hparams``, the study's configs) raise ValueError."""
    try:
        yield
    except LaboError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None
