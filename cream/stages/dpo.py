"""Train: the loss of `dpo.loss` from M_t to M_{t+1} on the pairs stage's examples -> `adapter/` (or `model/`).

The trainer is `cream.training.dpo_trainer.CreamDPOTrainer`: the reference log-probs come from the reward stage,
each example's label and weight reach the loss. The loss's layout names the examples it reads: the pairs
(`pairs.jsonl`) or every scored response (`scored_responses.jsonl`). Training runs in the loop's process, or under `accelerate launch`
(DeepSpeed ZeRO-3, FSDP) when `dpo.accelerate_config` is set (`cream.training.launch`); the same function runs
in either case.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cream.config import DPOConfig, ModelConfig
from cream.training.dpo_trainer import CreamDPOTrainer, ExampleCollator, examples_dataset, training_args
from cream.training.finetune import last_complete_checkpoint, load_trainable, save_policy
from cream.training.launch import run_training
from cream.engine.models import ModelRef, load_tokenizer
from cream.plugins.registry import LOSSES
from cream.stages import Context, StageResult

NAME = "dpo"
READS = ("pairs",)
CONFIG = ("dpo", "model", "seed")


def run(ctx: Context, stage_dir: Path) -> StageResult:
    ctx.pool.release()  # training loads its own trainable copy
    t = ctx.iteration
    examples = ctx.file("pairs", LOSSES.get(ctx.cfg.dpo.loss).layout)  # the pairs stage's output of that name
    model, metrics = train(ctx.cfg.dpo, ctx.cfg.model, ctx.policy, examples, stage_dir,
                           ctx.cfg.seed + t, f"m{t + 1}", ctx.device)
    return StageResult(metrics, {"model": model})


def train(cfg: DPOConfig, model_cfg: ModelConfig, policy: ModelRef, examples_path: Path, stage_dir: Path, seed: int,
          output_name: str, device: str = "cpu") -> tuple[ModelRef, dict]:
    """Train M_t on the examples of `dpo.loss` (`examples_path`: pairs or scored responses); returns M_{t+1} and the
    stage metrics. In this process, or in
    `dpo.num_processes` processes under `accelerate launch --config_file dpo.accelerate_config`."""
    return run_training(train_in_process, cfg, stage_dir, cfg, model_cfg, policy, examples_path, stage_dir, seed, output_name,
                        device)


def train_in_process(cfg: DPOConfig, model_cfg: ModelConfig, policy: ModelRef, examples_path: Path, stage_dir: Path, seed: int,
                     output_name: str, device: str = "cpu") -> tuple[ModelRef, dict]:
    """`train` in the calling process, one of the launched ones or the loop's own."""
    loss = LOSSES.get(cfg.loss)
    dataset = examples_dataset(examples_path, loss)
    tokenizer = load_tokenizer(policy.base)
    # The arguments first: under DeepSpeed ZeRO-3 they make `from_pretrained` load each rank's shard only.
    args = training_args(cfg, Path(stage_dir) / "checkpoints", seed, len(dataset), device)
    model, peft_config = load_trainable(policy, model_cfg, cfg)
    trainer = CreamDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=ExampleCollator(tokenizer.pad_token_id, loss),
        peft_config=peft_config,
        loss=loss,
    )
    # Counted, not inferred: every sequence through the backbone. With the reward stage's reference
    # log-probs that is 2 per pair and epoch (chosen, rejected), 1 per response; a reference pass would double it.
    forwarded = [0]
    backbone = trainer.accelerator.unwrap_model(trainer.model)
    backbone = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    hook = backbone.model.register_forward_pre_hook(
        lambda _, args, kwargs: forwarded.__setitem__(0, forwarded[0] + len((args or [kwargs["input_ids"]])[0])),
        with_kwargs=True)
    checkpoint = last_complete_checkpoint(Path(args.output_dir))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    hook.remove()
    out_dir = Path(stage_dir) / ("adapter" if hasattr(trainer.model, "peft_config") else "model")
    save_policy(trainer, out_dir, tokenizer=None if out_dir.name == "adapter" else tokenizer)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(args.output_dir, ignore_errors=True)  # resume points are useless once M_{t+1} is saved
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    metrics = {
        "dpo/loss": float(result.training_loss),
        "dpo/final_loss": float(last.get("loss", result.training_loss)),
        "dpo/margin": float(last.get("rewards/margins", float("nan"))),
        "dpo/accuracy": float(last.get("rewards/accuracies", float("nan"))),
        "dpo/steps": int(trainer.state.global_step),
        f"dpo/{loss.layout}": len(dataset),
        "dpo/forward_sequences": forwarded[0],
        "dpo/global_batch": cfg.batch_size * cfg.grad_accum * trainer.accelerator.num_processes,
    }
    if out_dir.name == "adapter":
        return ModelRef(output_name, policy.base, str(out_dir)), metrics
    return ModelRef(output_name, str(out_dir)), metrics
