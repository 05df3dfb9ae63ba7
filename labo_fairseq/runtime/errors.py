"""The errors a user can fix. Library code raises them; only the command line (:mod:`labo_fairseq.cli`)
turns them into one line on stderr and an exit status."""



class LaboError(Exception):
    """An error stated in one line that names what is wrong and the fix; ``status``: the exit status."""

    status = 1


class UsageError(LaboError, ValueError):
    """Bad input: an argument, a value out of range, a missing or unusable input."""

    status = 2


class InvalidFile(UsageError):
    """A file that is missing or not what it should be (truncated JSON, a damaged checkpoint), named."""


class ToolError(LaboError, RuntimeError):
    """A tool this package started (fairseq, a compiler) failed; the message ends with its output's tail."""
