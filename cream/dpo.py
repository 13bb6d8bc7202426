"""Train stage: consistency-regularized DPO from M_t to M_{t+1}, on TRL's DPOTrainer (pinned: trl==1.16.0).

The subclass changes three things and nothing else:
- pairs arrive tokenized (the exact ids that were sampled and scored), so TRL's tokenization is skipped;
- the reference log-probs are the reward stage's, passed as columns, so TRL's precompute pass is skipped;
- each pair carries its confidence C into the loss `cream_loss` (stock TRL drops extra columns and its
  sigmoid loss ignores label smoothing).

Training runs in the loop's process, or under `accelerate launch` (DeepSpeed ZeRO-3, FSDP) when
`dpo.accelerate_config` is set (`cream.launch`); the same function runs in either case.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

import torch
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from cream.artifacts import read_jsonl
from cream.config import DPOConfig, ModelConfig
from cream.launch import run_training
from cream.losses import cream_loss, dpo_logits
from cream.models import ModelRef, load_base_model, load_tokenizer

CONSISTENCY = "consistency"
PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps", CONSISTENCY)


class PreferenceCollatorWithConsistency(DataCollatorForPreference):
    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch[CONSISTENCY] = torch.tensor([float(e[CONSISTENCY]) for e in examples])
        return batch


class CreamDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is C * (-log sigmoid h) + (1 - C) * (-log sigmoid -h) with a per-pair C."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        missing = [c for c in PAIR_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(f"CreamDPOTrainer needs pre-tokenized pairs; missing columns {missing}")
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if CONSISTENCY not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, CONSISTENCY]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return dataset  # the reward stage already computed them under M_t

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            use_cache=False,
            fused_lm_head=True,
        )
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the collator stacks [chosen; rejected]
        h = dpo_logits(chosen_logps, rejected_logps, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"], self.beta)
        loss = cream_loss(h, inputs[CONSISTENCY]).mean()

        h = h.detach()
        metrics = self._metrics[mode]
        metrics["rewards/margins"].append(self.accelerator.gather(h / self.beta).mean().item())
        metrics["rewards/accuracies"].append(self.accelerator.gather((h > 0).float()).mean().item())
        metrics["consistency"].append(self.accelerator.gather(inputs[CONSISTENCY]).mean().item())
        metrics["logps/chosen"].append(self.accelerator.gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(self.accelerator.gather(rejected_logps.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss


def pairs_dataset(pairs_path: Path):
    from datasets import Dataset

    rows = read_jsonl(pairs_path)
    return Dataset.from_list([{c: row[c] for c in PAIR_COLUMNS} for row in rows])


def training_args(cfg: DPOConfig, output_dir: Path, seed: int, n_pairs: int) -> TRLDPOConfig:
    steps = math.ceil(n_pairs / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs
    return TRLDPOConfig(
        output_dir=str(output_dir),
        beta=cfg.beta,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # < 1 reads as a ratio of the total steps
        # TRL turns both on by default; the config decides.
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        precompute_ref_log_probs=True,
        max_length=None,
        logging_steps=max(1, int(steps // 20)),
        save_strategy="steps",
        save_steps=max(1, int(steps // 4)),
        save_total_limit=1,
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def lora_adapter_config(cfg: DPOConfig):
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def load_trainable(policy: ModelRef, model_cfg: ModelConfig, dpo_cfg: DPOConfig):
    """The policy M_t as a trainable model: its LoRA adapter continues training, or its full weights do."""
    model = load_base_model(policy.base, model_cfg)
    if policy.adapter is None:
        return model, (lora_adapter_config(dpo_cfg) if dpo_cfg.lora is not None else None)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, policy.adapter, adapter_name="default", is_trainable=True), None


def save_policy(trainer, out_dir: Path) -> None:
    """Save M_{t+1}: only the trained adapter (not TRL's frozen "ref" copy), or the full model.

    Called by every training process: under ZeRO-3 or FSDP each holds a shard, and gathering the full
    weights takes all of them; the main process writes.
    """
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model_wrapped)  # the DeepSpeed engine under ZeRO-3
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(trainer.model)
        if hasattr(model, "peft_config"):
            model.save_pretrained(out_dir, selected_adapters=["default"], state_dict=state_dict)
        else:
            model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
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


def train(
    cfg: DPOConfig,
    model_cfg: ModelConfig,
    policy: ModelRef,
    pairs_path: Path,
    stage_dir: Path,
    seed: int,
    output_name: str,
) -> tuple[ModelRef, dict]:
    """Train M_t on the pairs; returns M_{t+1} and the stage metrics. In this process, or in
    `dpo.num_processes` processes under `accelerate launch --config_file dpo.accelerate_config`."""
    return run_training(train_in_process, cfg, stage_dir, cfg, model_cfg, policy, pairs_path, stage_dir, seed, output_name)


def train_in_process(
    cfg: DPOConfig,
    model_cfg: ModelConfig,
    policy: ModelRef,
    pairs_path: Path,
    stage_dir: Path,
    seed: int,
    output_name: str,
) -> tuple[ModelRef, dict]:
    """`train` in the calling process, one of the launched ones or the loop's own."""
    dataset = pairs_dataset(pairs_path)
    tokenizer = load_tokenizer(policy.base)
    # The arguments first: under DeepSpeed ZeRO-3 they make `from_pretrained` load each rank's shard only.
    args = training_args(cfg, Path(stage_dir) / "checkpoints", seed, len(dataset))
    model, peft_config = load_trainable(policy, model_cfg, cfg)
    trainer = CreamDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=PreferenceCollatorWithConsistency(pad_token_id=tokenizer.pad_token_id),
        peft_config=peft_config,
    )
    # Counted, not inferred: every sequence through the backbone. With the reward stage's reference
    # log-probs that is 2 per pair and epoch (chosen, rejected); a reference pass would double it.
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
    save_policy(trainer, out_dir)
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
        "dpo/pairs": len(dataset),
        "dpo/forward_sequences": forwarded[0],
        "dpo/global_batch": cfg.batch_size * cfg.grad_accum * trainer.accelerator.num_processes,
    }
    if out_dir.name == "adapter":
        return ModelRef(output_name, policy.base, str(out_dir)), metrics
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
    return ModelRef(output_name, str(out_dir)), metrics
