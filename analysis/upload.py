"""`--wandb-upload` of analysis.compare: the figures logged to a new W&B run, when W&B can upload."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from analysis.figures import FIGURES


def wandb_unavailable() -> Optional[str]:
    """Why W&B cannot upload now, or None."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "no API key (set WANDB_API_KEY or run `wandb login`)"


def upload(out_dir: Path, project: str, methods: list[str]) -> None:
    """Log the figures to a new W&B run; one printed line instead when W&B cannot upload."""
    reason = wandb_unavailable()
    if reason:
        print(f"W&B upload skipped: {reason}")
        return
    try:
        import wandb

        run = wandb.init(project=project, job_type="compare", config={"methods": methods})
        run.log({name: wandb.Image(str(out_dir / f"{name}.png")) for name in FIGURES})
        print(f"W&B: figures logged to {run.url}")
        run.finish()
    except Exception as e:  # noqa: BLE001 - the local report is complete; W&B is a copy
        print(f"W&B upload failed: {e}")
