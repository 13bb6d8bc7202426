"""What SFT and DPO share: the policy as a trainable model, the trainer's arguments, resume points, the
training run itself (`fit`: resumed, its forwarded sequences counted, the next model saved) and its result.

A resumed training reports what the uninterrupted one would: every optimizer step's loss is logged
(`logging_steps=1`) and kept in the checkpoint's trainer state, so the mean loss is taken over the whole run's
history (the Trainer's own `training_loss` averages the resumed session's steps only), and the count of
forwarded sequences is saved beside each checkpoint and continued from there.

Both train in the loop's process, or in every process of `accelerate launch` (`cream.training.launch`).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cream.config import ModelConfig
from cream.config.training import TrainingConfig
from cream.engine.models import load_base_model, require_safetensors
from cream.errors import StageError
from cream.runs.artifacts import write_json
from cream.runs.model_ref import ModelRef


def shared_arguments(cfg: TrainingConfig, output_dir: Path, seed: int, save_steps: int, device: str) -> dict:
    """The TRL arguments of both trainers: the config's schedule and precision, a resume point in `output_dir`
    every `save_steps` optimizer steps (the newest only), nothing reported elsewhere."""
    return dict(
        output_dir=str(output_dir),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # < 1 reads as a ratio of the total steps
        # TRL turns both on by default; the config decides.
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        save_strategy="steps",  # resume points: an interrupted training continues from its last checkpoint
        save_steps=save_steps,
        save_total_limit=1,
        logging_steps=1,  # each step's loss in the history a checkpoint keeps: a resumed run's mean is the whole run's
        report_to=[],
        seed=seed,
        use_cpu=torch.device(device).type == "cpu",  # the key `device`, resolved
        dataloader_pin_memory=False,  # a collator may build device tensors, which cannot be pinned
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


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


COUNTS = "cream_counts.json"  # beside a checkpoint's own files, written after them: what `fit` counted so far


def last_complete_checkpoint(folder: Path) -> Optional[Path]:
    """The newest checkpoint whose trainer state and counts (written last) are whole; a kill can cut the newest."""
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            json.loads((checkpoint / COUNTS).read_text())
            return checkpoint
        except (OSError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class Trained:
    """What a training run gives back: the next model, saved, and what its stage reports of the run."""

    model: ModelRef
    loss: float  # the mean training loss over the run's steps, those before a resume included
    steps: int  # optimizer steps
    # Counted, not inferred: every sequence through the backbone in every process (DPO with the reward stage's
    # reference log-probs: 2 per pair and epoch, 1 per response; a reference pass would double it).
    forward_sequences: int
    # the logged values averaged over the last 5% of the steps (at least one): TRL's metrics at the end of training
    last_log: dict
    processes: int  # training processes: the global batch is batch_size x grad_accum x processes


def _check_finite(trainer, training_loss: float, section: str) -> None:
    """Refuse to save a diverged model: a NaN or infinite loss or weight would be evaluated, reported and trained on
    as if it were a model. The stage stays incomplete; changing the key resumes the run from this stage."""
    losses = [training_loss] + [h["loss"] for h in trainer.state.log_history if "loss" in h]
    bad = [name for name, p in trainer.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad or not all(math.isfinite(x) for x in losses):
        what = f"{len(bad)} trained tensors hold NaN or inf (e.g. {bad[0]})" if bad else "the loss is not finite"
        raise StageError(f"{section}: training diverged, {what}; nothing was saved. Lower `{section}.lr` (or `dpo.beta` "
                         f"for DPO) and rerun the same command: the run resumes at this stage")


def fit(trainer, stage_dir: Path, policy: ModelRef, output_name: str) -> Trained:
    """Train from the newest complete checkpoint (or from the start), save the next model into
    `<stage_dir>/adapter` (a LoRA adapter over `policy`'s base) or `<stage_dir>/model` (full weights and the
    tokenizer), then drop the checkpoints, useless once the model is saved."""
    from transformers import TrainerCallback

    checkpoint = last_complete_checkpoint(Path(trainer.args.output_dir))
    before = json.loads((checkpoint / COUNTS).read_text())["forward_sequences"] if checkpoint else 0  # all processes
    forwarded = [0]  # this process's, since this session started
    backbone = trainer.accelerator.unwrap_model(trainer.model)
    backbone = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    hook = backbone.model.register_forward_pre_hook(
        lambda _, args, kwargs: forwarded.__setitem__(0, forwarded[0] + len((args or [kwargs["input_ids"]])[0])),
        with_kwargs=True)

    def all_processes() -> int:  # every process calls it (a collective under DDP or FSDP)
        return before + int(trainer.accelerator.reduce(torch.tensor(forwarded[0]), reduction="sum").item())

    class SaveCounts(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            total = all_processes()
            if state.is_world_process_zero:
                write_json(Path(args.output_dir) / f"checkpoint-{state.global_step}" / COUNTS,
                           {"forward_sequences": total})

    trainer.add_callback(SaveCounts())
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    hook.remove()
    forward_sequences = all_processes()
    history = [h for h in trainer.state.log_history if "loss" in h]  # one per step, those before a resume included
    loss = sum(h["loss"] for h in history) / len(history) if history else float(result.training_loss)
    _check_finite(trainer, loss, Path(stage_dir).name)
    adapter = hasattr(trainer.model, "peft_config")
    out_dir = Path(stage_dir) / ("adapter" if adapter else "model")
    save_policy(trainer, out_dir, tokenizer=None if adapter else trainer.processing_class)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    model = ModelRef(output_name, policy.base, str(out_dir)) if adapter else ModelRef(output_name, str(out_dir))
    return Trained(model, loss, int(trainer.state.global_step), forward_sequences, final_window(history),
                   trainer.accelerator.num_processes)


def final_window(history: list[dict]) -> dict:
    """Each numeric value of the per-step logs averaged over the last 5% of the steps (at least one)."""
    window = history[-max(1, len(history) // 20):]
    keys = [k for k, v in (window[-1] if window else {}).items() if isinstance(v, (int, float))]
    return {k: sum(h[k] for h in window if k in h) / sum(k in h for h in window) for k in keys}
