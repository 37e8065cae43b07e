"""Exceptions the user can act on. Every message names the file or option and the fault."""


class MPUError(Exception):
    """Base class: a user-facing error, printed as one line by the CLI."""


class ConfigError(MPUError, ValueError):
    """An invalid option, unknown key or inconsistent configuration."""


class CheckpointError(MPUError, ValueError):
    """A model folder or weights file that is missing, truncated, corrupt or mismatched."""


class UnsupportedArchitectureError(MPUError, ValueError):
    """A model family or tensor layout no adapter recognises."""


class UpdateRejectedError(MPUError, ValueError):
    """A returned update (delta) that fails validation: wrong job, round, copy, shape, dtype, values."""


class DataError(MPUError, ValueError):
    """A data set, split or field that is missing or malformed."""


class Interrupted(MPUError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM); finished work is kept, a rerun resumes."""


def printable(text: object, limit: int = 200) -> str:
    """`text` safe to print: control characters (newlines, ANSI escapes) escaped, length capped.

    Strings from files a party received (ticket ids, job ids) are untrusted: printed raw they
    could forge log lines or drive the terminal.
    """
    s = str(text)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return out if len(out) <= limit else out[:limit] + "…"
