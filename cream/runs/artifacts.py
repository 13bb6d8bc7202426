"""Run-folder artifacts: atomic JSON/JSONL writes, file:line errors on read, manifests, completion marks.

A stage folder holds its artifacts, `started.json` (the fingerprint it was started from),
`manifest.json` (the outputs with their hashes, the fingerprint, the metrics) and `DONE`, written last.
A folder without `DONE` is incomplete and is redone.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from cream.errors import DataError, StageError

DONE = "DONE"
MANIFEST = "manifest.json"
STARTED = "started.json"  # what the stage was started from (cream.runs.run_folder.prepare_stage)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are 0600


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def strict_json(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: strict JSON parsers reject them."""
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral) and not math.isfinite(obj):
        return None  # numpy and torch scalars included
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One strict JSON line (NaN written as null)."""
    return json.dumps(strict_json(obj), ensure_ascii=False, allow_nan=False, default=_json_default) + "\n"


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(strict_json(obj), indent=2, allow_nan=False, default=_json_default) + "\n"
    write_bytes(Path(path), text.encode())


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_bytes(Path(path), "".join(json_line(r) for r in rows).encode())


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSONL file; a bad line raises DataError naming file:line. Blank lines are skipped."""
    return (row for _, row in iter_numbered_jsonl(path))


def iter_numbered_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of each non-blank line of a JSONL file, as `iter_jsonl` reads them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_complete(stage_dir: Path) -> bool:
    return (Path(stage_dir) / DONE).is_file()


def mark_complete(stage_dir: Path, extra: dict | None = None) -> None:
    """Write the manifest (outputs with their hashes, and `extra`), then the DONE mark."""
    stage_dir = Path(stage_dir)
    outputs = sorted(p for p in stage_dir.rglob("*") if p.is_file() and p.name not in (DONE, MANIFEST, STARTED))
    manifest = {
        "outputs": {str(p.relative_to(stage_dir)): file_hash(p) for p in outputs},
        **(extra or {}),
    }
    write_json(stage_dir / MANIFEST, manifest)
    write_bytes(stage_dir / DONE, b"")


def verify_outputs(stage_dir: Path) -> None:
    """Raise StageError when a completed stage's artifact no longer matches its manifest hash."""
    manifest = read_json(Path(stage_dir) / MANIFEST)
    for rel, digest in manifest["outputs"].items():
        path = Path(stage_dir) / rel
        if not path.is_file() or file_hash(path) != digest:
            raise StageError(
                f"{path}: artifact changed on disk since the stage completed (hash mismatch); "
                f"delete {stage_dir} to recompute that stage"
            )
