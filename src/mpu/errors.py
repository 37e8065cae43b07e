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
