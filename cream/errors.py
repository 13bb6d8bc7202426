"""User-facing errors: each names the key, file or line at fault. `train.py` prints them and exits 2."""

import os
import re
from typing import Optional


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


def require(condition: bool, key: str, message: str) -> None:
    """The config schema's range checks (`cream.config` and the methods' settings dataclasses): an error naming the key."""
    if not condition:
        raise ConfigError(f"config key `{key}`: {message}")


def system_error(error: BaseException) -> Optional[str]:
    """The one-line report of an operating-system failure (a full disk, a read-only folder), raised either as an
    `OSError` or, by the Rust-backed libraries (tokenizers, safetensors), as a plain exception whose message ends
    in `(os error N)`; None for any other error."""
    if isinstance(error, OSError):
        path = error.filename2 or error.filename  # a rename's target
        return f"{path}: {error.strerror}" if path else str(error)
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found is None:
        return None
    return f"{os.strerror(int(found.group(1)))} (os error {found.group(1)})"
