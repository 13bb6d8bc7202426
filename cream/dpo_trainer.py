"""Consistency-regularized DPO on TRL's DPOTrainer (pinned: trl==1.16.0).

The subclass changes three things and nothing else:
- pairs arrive tokenized (the exact ids that were sampled and scored), so TRL's tokenization is skipped;
- the reference log-probs are the reward stage's, passed as columns, so TRL's precompute pass is skipped;
- each pair carries its consistency C into the loss `cream_loss` (stock TRL drops extra columns and its
  sigmoid loss ignores label smoothing).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from cream.config import DPOConfig
from cream.losses import cream_loss, dpo_logits
from cream.rows import Pair, read_rows

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

    return Dataset.from_list([{c: getattr(pair, c) for c in PAIR_COLUMNS} for pair in read_rows(pairs_path, Pair)])


def training_args(cfg: DPOConfig, output_dir: Path, seed: int, n_pairs: int, device: str = "cpu") -> TRLDPOConfig:
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
        use_cpu=torch.device(device).type == "cpu",  # the key `device`, resolved
        dataloader_pin_memory=False,  # a collator may build device tensors, which cannot be pinned
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
