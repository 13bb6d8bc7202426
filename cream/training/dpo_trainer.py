"""The loss of `dpo.loss` on TRL's DPOTrainer (pinned: trl==1.16.0), and the DPO training run (`train`: M_t
to M_{t+1} on the pairs stage's examples, in this process or under `accelerate launch`).

The subclass changes four things and nothing else:
- examples arrive tokenized (the exact ids that were sampled and scored), so TRL's tokenization is skipped;
- the reference log-probs are the reward stage's, passed as columns, so TRL's precompute pass is skipped;
- the per-example columns the loss reads (a pair's label `target`, `weight`, penalty) reach it (stock TRL
  drops extra columns and its sigmoid loss ignores label smoothing);
- the loss is the registered one (`cream.plugins.registry.LOSSES`), computed from the summed log-probs of the batch's
  sequences. Its layout decides the examples: `pairs` (TRL's collator, the batch stacked [chosen; rejected])
  or `responses` (one sequence per scored response, SPPO): the same forward either way.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from cream.config import DPOConfig, ModelConfig
from cream.engine.models import load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.plugins.contracts import Loss
from cream.plugins.registry import LOSSES
from cream.runs.rows import Pair, ScoredResponse, read_rows
from cream.training.finetune import fit, load_trainable, shared_arguments
from cream.training.launch import run_training
from cream.training.losses import CREAM

# per layout: the row type of its file and the columns every loss of that layout reads
LAYOUTS = {
    "pairs": (Pair, ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")),
    "responses": (ScoredResponse, ("prompt_ids", "completion_ids", "ref_logps")),
}


def loss_columns(loss: Loss) -> tuple[str, ...]:
    """Every column a loss's examples carry: its layout's ids and reference log-probs, then its own."""
    return (*LAYOUTS[loss.layout][1], *loss.columns)


class ExampleCollator(DataCollatorForPreference):
    """TRL's preference collator for pairs, or one padded sequence per response, plus the loss's own columns."""

    def __init__(self, pad_token_id: int, loss: Loss = CREAM):
        super().__init__(pad_token_id=pad_token_id)
        self.loss = loss

    def torch_call(self, examples):
        batch = super().torch_call(examples) if self.loss.layout == "pairs" else self._responses(examples)
        for column in self.loss.columns:
            batch[column] = torch.tensor([float(e[column]) for e in examples])
        return batch

    def _responses(self, examples):
        ids = [torch.tensor(e["prompt_ids"] + e["completion_ids"]) for e in examples]
        completion = [torch.tensor([0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"])) for e in examples]
        return {
            "input_ids": pad(ids, padding_value=self.pad_token_id, padding_side="right"),
            "attention_mask": pad([torch.ones_like(i) for i in ids], padding_value=0, padding_side="right"),
            "completion_mask": pad(completion, padding_value=0, padding_side="right"),
            "ref_logps": torch.tensor([float(e["ref_logps"]) for e in examples]),
        }


class CreamDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is the registered `loss` (default: `cream`, target * (-log sigmoid h) + (1 - target) *
    (-log sigmoid -h) with each pair's label `target` and weight)."""

    def __init__(self, *args, loss: Loss = CREAM, **kwargs):
        self.loss_plugin = loss  # read by `_prepare_dataset` during DPOTrainer's own __init__
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        missing = [c for c in loss_columns(self.loss_plugin) if c not in dataset.column_names]
        if missing:
            raise ValueError(f"CreamDPOTrainer needs pre-tokenized {self.loss_plugin.layout}; missing columns {missing}")
        return dataset

    def _set_signature_columns_if_needed(self):
        self._signature_columns = list(loss_columns(self.loss_plugin))

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
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)  # one per sequence
        per_example, logged = self.loss_plugin.per_example(logps, inputs, self.beta)
        metrics = self._metrics[mode]
        for name, values in logged.items():
            metrics[name].append(self.accelerator.gather(values.detach()).mean().item())
        loss = per_example.mean()
        return (loss, outputs) if return_outputs else loss


def examples_dataset(path: Path, loss: Loss = CREAM):
    """The examples of `path` (pairs.jsonl or scored_responses.jsonl) with the columns `loss` reads."""
    from datasets import Dataset

    row_type = LAYOUTS[loss.layout][0]
    return Dataset.from_list([{c: getattr(row, c) for c in loss_columns(loss)} for row in read_rows(path, row_type)])


def training_args(cfg: DPOConfig, output_dir: Path, seed: int, n_examples: int, device: str = "cpu") -> TRLDPOConfig:
    steps = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs
    return TRLDPOConfig(
        **shared_arguments(cfg, output_dir, seed, max(1, int(steps // 4)), device),
        beta=cfg.beta,
        precompute_ref_log_probs=True,
        max_length=None,
    )


def train(cfg: DPOConfig, model_cfg: ModelConfig, policy: ModelRef, examples_path: Path, stage_dir: Path, seed: int,
          output_name: str, device: str = "cpu") -> tuple[ModelRef, dict]:
    """Train M_t on the examples of `dpo.loss` (`examples_path`: pairs or scored responses); returns M_{t+1} and the
    stage metrics. In this process, or in `dpo.num_processes` processes under
    `accelerate launch --config_file dpo.accelerate_config`."""
    return run_training(train_in_process, cfg, stage_dir, cfg, model_cfg, policy, examples_path, stage_dir, seed,
                        output_name, device)


def train_in_process(cfg: DPOConfig, model_cfg: ModelConfig, policy: ModelRef, examples_path: Path, stage_dir: Path,
                     seed: int, output_name: str, device: str = "cpu") -> tuple[ModelRef, dict]:
    """`train` in the calling process, one of the launched ones or the loop's own."""
    loss = LOSSES.get(cfg.loss)
    dataset = examples_dataset(examples_path, loss)
    tokenizer = load_tokenizer(policy.base)
    # The arguments first: under DeepSpeed ZeRO-3 they make `from_pretrained` load each rank's shard only.
    args = training_args(cfg, Path(stage_dir) / "checkpoints", seed, len(dataset), device)
    model, peft_config = load_trainable(policy, model_cfg, cfg)
    trainer = CreamDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              data_collator=ExampleCollator(tokenizer.pad_token_id, loss), peft_config=peft_config,
                              loss=loss)
    trained = fit(trainer, stage_dir, policy, output_name)
    metrics = {
        "dpo/loss": trained.loss,
        "dpo/final_loss": float(trained.last_log.get("loss", trained.loss)),
        "dpo/margin": float(trained.last_log.get("rewards/margins", float("nan"))),
        "dpo/accuracy": float(trained.last_log.get("rewards/accuracies", float("nan"))),
        "dpo/steps": trained.steps,
        f"dpo/{loss.layout}": len(dataset),
        "dpo/forward_sequences": trained.forward_sequences,
        "dpo/global_batch": cfg.batch_size * cfg.grad_accum * trained.processes,
    }
    return trained.model, metrics
