"""User-facing errors: each names the key, file or line at fault. `train.py` prints them and exits 2."""


class CreamError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class ConfigError(CreamError):
    pass


class DataError(CreamError):
    pass


class ModelError(CreamError):
    pass


class StageError(CreamError):
    """A stage produced something the next stage cannot use (no pairs, NaN rewards, ...)."""
