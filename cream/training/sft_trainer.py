"""SFT: M0 -> M1 on the labelled seed conversations with TRL's SFTTrainer, loss on the assistant reply only.

TRL's prompt/completion format masks the prompt; its collator pads labels with -100, never with
the pad token id (mistake 3 of the published code). `tests/test_sft.py` checks the batch.
Like DPO, it runs in this process or under `accelerate launch` when `sft.accelerate_config` is set
(`cream.training.launch`).
"""

from __future__ import annotations

from pathlib import Path

from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from cream.config import ModelConfig, SFTConfig
from cream.engine.models import load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.errors import StageError
from cream.training.finetune import fit, load_trainable, shared_arguments
from cream.training.launch import run_training


def build_trainer(cfg: SFTConfig, model_cfg: ModelConfig, m0: ModelRef, examples: list[dict],
                  stage_dir: Path, seed: int, device: str = "cpu") -> SFTTrainer:
    from datasets import Dataset

    tokenizer = load_tokenizer(m0.base)
    # The arguments before the model: under DeepSpeed ZeRO-3 they make `from_pretrained` load each rank's shard only.
    args = TRLSFTConfig(
        **shared_arguments(cfg, Path(stage_dir) / "checkpoints", seed,
                           max(1, len(examples) // (cfg.batch_size * cfg.grad_accum) // 4), device),
        max_length=cfg.max_length,
        completion_only_loss=True,
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
    trained = fit(trainer, stage_dir, m0, "m1")
    metrics = {"sft/loss": trained.loss, "sft/steps": trained.steps, "sft/examples": len(examples),
               "sft/forward_sequences": trained.forward_sequences}
    return trained.model, metrics
