"""How several models of the loop share one copy of the base weights for scoring and sampling.

`ModelPool` serves any set of `ModelRef`s: adapters are loaded onto one base, M0 is the base with
adapters disabled; full checkpoints are loaded one at a time.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from cream.config import ModelConfig
from cream.errors import ModelError
from cream.engine.models import load_base_model, require_safetensors
from cream.runs.model_ref import ModelRef


class ModelPool:
    """Serves several `ModelRef`s, keeping at most one copy of base weights in memory."""

    def __init__(self, model_cfg: ModelConfig, device: str = "cpu"):
        self.model_cfg = model_cfg
        self.device = device  # where models are loaded: `Context.device`, resolved from the key `device`
        self._base_dir: Optional[str] = None
        self._model = None  # the base model, or a PeftModel wrapping it
        self._adapters: dict[str, str] = {}  # loaded adapter name -> folder

    def _load_base(self, base_dir: str) -> None:
        if self._base_dir == base_dir:
            return
        self.release()
        self._model = load_base_model(base_dir, self.model_cfg).to(self.device)  # adapters load onto its device
        self._base_dir = base_dir

    @contextmanager
    def use(self, ref: ModelRef) -> Iterator[torch.nn.Module]:
        """The model `ref` names, ready for inference."""
        self._load_base(ref.base)
        if ref.adapter is None:
            if self._adapters:
                with self._model.disable_adapter():
                    yield self._model
            else:
                yield self._model
            return
        from peft import PeftModel

        key = ref.adapter
        name = f"adapter_{len(self._adapters)}" if key not in self._adapters.values() else None
        if name is not None:
            if not (Path(key) / "adapter_config.json").is_file():
                raise ModelError(f"adapter folder {key} has no adapter_config.json (model {ref.name})")
            require_safetensors(key, f"adapter folder (model {ref.name})")
            if not self._adapters:
                self._model = PeftModel.from_pretrained(self._model, key, adapter_name=name, is_trainable=False)
            else:
                self._model.load_adapter(key, adapter_name=name, is_trainable=False)
            self._adapters[name] = key
        active = next(n for n, path in self._adapters.items() if path == key)
        self._model.set_adapter(active)
        self._model.eval()
        yield self._model

    def release(self) -> None:
        self._model = None
        self._base_dir = None
        self._adapters = {}
        gc.collect()
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()  # the next stage (training, another model) gets the memory back
