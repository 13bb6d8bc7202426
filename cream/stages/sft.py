"""SFT: M0 -> M1 on the labelled seed conversations, loss on the assistant reply only -> `adapter/` (or `model/`).

TRL's prompt/completion format masks the prompt; its collator pads labels with -100, never with
the pad token id (mistake 3 of the published code). `tests/test_sft.py` checks the batch.
Like DPO, it runs under `accelerate launch` when `sft.accelerate_config` is set (`cream.training.launch`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from cream.config import ModelConfig, SFTConfig
from cream.errors import StageError
from cream.training.finetune import last_complete_checkpoint, load_trainable, save_policy
from cream.training.launch import run_training
from cream.engine.models import ModelRef, load_tokenizer
from cream.stages import Context, StageResult

NAME = "sft"
READS: tuple[str, ...] = ()
CONFIG = ("sft", "model", "data", "seed")  # the settings its result depends on


def run(ctx: Context, stage_dir: Path) -> StageResult:
    ctx.pool.release()  # training loads its own trainable copy
    model, metrics = sft(ctx.cfg.sft, ctx.cfg.model, ctx.models[0], ctx.sft_examples, stage_dir, ctx.cfg.seed,
                         ctx.device)
    return StageResult(metrics, {"model": model})


def build_trainer(cfg: SFTConfig, model_cfg: ModelConfig, m0: ModelRef, examples: list[dict],
                  stage_dir: Path, seed: int, device: str = "cpu") -> SFTTrainer:
    from datasets import Dataset

    tokenizer = load_tokenizer(m0.base)
    # The arguments before the model: under DeepSpeed ZeRO-3 they make `from_pretrained` load each rank's shard only.
    args = TRLSFTConfig(
        output_dir=str(Path(stage_dir) / "checkpoints"),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        completion_only_loss=True,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # < 1 reads as a ratio of the total steps
        logging_steps=5,
        save_strategy="steps",  # resume points: an interrupted SFT continues from its last checkpoint
        save_steps=max(1, len(examples) // (cfg.batch_size * cfg.grad_accum) // 4),
        save_total_limit=1,
        report_to=[],
        seed=seed,
        use_cpu=torch.device(device).type == "cpu",  # the key `device`, resolved
        dataloader_pin_memory=False,  # a collator may build device tensors, which cannot be pinned
    )
    model, peft_config = load_trainable(m0, model_cfg, cfg)
    dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


def sft(cfg: SFTConfig, model_cfg: ModelConfig, m0: ModelRef, examples: list[dict], stage_dir: Path,
        seed: int, device: str = "cpu") -> tuple[ModelRef, dict]:
    """Fine-tune M0 on the seed examples; returns M1 and the stage metrics. In this process, or under
    `accelerate launch` with the training processes of `sft.accelerate_config`."""
    return run_training(sft_in_process, cfg, stage_dir, cfg, model_cfg, m0, examples, stage_dir, seed, device)


def sft_in_process(cfg: SFTConfig, model_cfg: ModelConfig, m0: ModelRef, examples: list[dict],
                   stage_dir: Path, seed: int, device: str = "cpu") -> tuple[ModelRef, dict]:
    """`sft` in the calling process, one of the launched ones or the loop's own."""
    trainer = build_trainer(cfg, model_cfg, m0, examples, stage_dir, seed, device)
    if len(trainer.train_dataset) == 0:
        raise StageError(f"no SFT example fits in sft.max_length={cfg.max_length} tokens with room for its reply")
    checkpoint = last_complete_checkpoint(Path(trainer.args.output_dir))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    peft = hasattr(trainer.model, "peft_config")
    out_dir = Path(stage_dir) / ("adapter" if peft else "model")
    save_policy(trainer, out_dir, tokenizer=None if peft else load_tokenizer(m0.base))
    if trainer.accelerator.is_main_process:
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    metrics = {"sft/loss": float(result.training_loss), "sft/steps": int(trainer.state.global_step),
               "sft/examples": len(examples)}
    if peft:
        return ModelRef("m1", m0.base, str(out_dir)), metrics
    return ModelRef("m1", str(out_dir)), metrics
