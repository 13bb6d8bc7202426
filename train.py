"""Run an experiment: `python train.py` (the default, cream_smollm) or `python train.py experiment=smoke`."""

import sys

import hydra
from omegaconf import DictConfig

from cream.config import load_config
from cream.errors import CreamError


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from cream.loop import run

    try:
        run(load_config(cfg))
    except CreamError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
