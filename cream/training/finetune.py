"""What SFT and DPO share: the policy as a trainable model, resume points, and saving the next model.

Both train in the loop's process, or in every process of `accelerate launch` (cream/launch.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from cream.config import ModelConfig, TrainingConfig
from cream.engine.models import ModelRef, load_base_model, require_safetensors


def lora_adapter_config(cfg: TrainingConfig):
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def load_trainable(policy: ModelRef, model_cfg: ModelConfig, cfg: TrainingConfig):
    """The policy M_t as a trainable model: its LoRA adapter continues training, or its full weights do."""
    model = load_base_model(policy.base, model_cfg)
    if policy.adapter is None:
        return model, (lora_adapter_config(cfg) if cfg.lora is not None else None)
    from peft import PeftModel

    require_safetensors(policy.adapter, "adapter folder")
    return PeftModel.from_pretrained(model, policy.adapter, adapter_name="default", is_trainable=True), None


def save_policy(trainer, out_dir: Path, tokenizer=None) -> None:
    """Save M_{t+1}: only the trained adapter (not TRL's frozen "ref" copy), or the full model (with
    `tokenizer`). Written into a temporary sibling folder renamed into place, so a kill mid-save never
    leaves a partial folder under `out_dir`'s name; a folder already there is replaced.

    Called by every training process: under ZeRO-3 or FSDP each holds a shard, and gathering the full
    weights takes all of them; the main process writes.
    """
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model_wrapped)  # the DeepSpeed engine under ZeRO-3
    if accelerator.is_main_process:
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = accelerator.unwrap_model(trainer.model)
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp, selected_adapters=["default"], state_dict=state_dict)
        else:
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    accelerator.wait_for_everyone()


def last_complete_checkpoint(folder: Path) -> Optional[Path]:
    """The newest checkpoint whose trainer state (written last by the Trainer) is whole; a kill can cut the newest."""
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return checkpoint
        except (OSError, ValueError):
            continue
    return None
