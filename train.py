"""Run an experiment: `python train.py` (the default, cream_smollm), `python train.py +experiment=smoke` or
`python train.py experiment=smoke` (the same)."""

import os
import sys

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cream.config import load_config
from cream.errors import CreamError, system_error
from cream.plugins.registry import load_plugins

load_plugins()  # the methods' settings groups join the schema before Hydra composes the config

if __name__ == "__mp_main__":
    # A process that multiprocessing spawned from the loop (vLLM's engine core, and its workers in turn) imports
    # this file first: it dies with its parent, so a killed loop leaves no engine behind holding memory or GPUs.
    from cream.training.launch import die_with_parent

    die_with_parent()


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from cream.loop import run

    typed = None
    try:
        typed = load_config(cfg)
        run(typed)  # sets typed.run_name to the folder's name when a suffix was needed
    except CreamError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)  # a line of its own, after any progress bar cut short
        name = typed.run_name if typed is not None else cfg.run_name
        fail(f"interrupted; rerun the same command with run_name={name} to resume", 130)
    except Exception as e:  # a read-only folder, a full disk: completed stages are kept, the same command resumes
        report = system_error(e)
        if report is None:
            raise
        fail(report)


def experiment_as_override(argv: list[str]) -> list[str]:
    """`+experiment=NAME` (the form of Hydra's docs for experiment presets) as `experiment=NAME`: the defaults
    list already holds the group (the default experiment), which Hydra refuses to add a second time."""
    return [a.lstrip("+") if a.lstrip("+").startswith("experiment=") else a for a in argv]


if __name__ == "__main__":
    sys.argv = experiment_as_override(sys.argv)
    # Hydra then raises its errors (an unknown key or option, a bad value, a run folder it cannot create)
    # instead of printing them with a traceback and exiting 1; they are reported here, exit code 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else ""
        fail("\n".join(str(m) for m in (e, cause) if m))
    except Exception as e:  # Hydra could not create the run folder, or open its log there
        error = e if isinstance(e, OSError) else e.__cause__
        if not isinstance(error, OSError):
            raise
        fail(f"{error.filename}: {error.strerror} (the run folder, under config key `paths.runs`)")
    except KeyboardInterrupt:
        fail("interrupted before the run started", 130)
