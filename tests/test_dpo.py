"""The TRL hook: pre-tokenized pairs, reference log-probs from the reward stage, per-pair label in the loss."""

import pytest
import torch
from trl import DPOTrainer

from cream.config import DPOConfig, ModelConfig
from cream.config.engine import ModelSource
from cream.config.training import LoraConfig
from cream.training.dpo_trainer import CreamDPOTrainer, ExampleCollator, examples_dataset, train, training_args
from cream.engine.generation import chat_prompt_ids
from cream.training.losses import CREAM, cream_loss
from cream.plugins.registry import LOSSES
from cream.engine.models import load_base_model, load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.runs.rows import Pair, write_rows
from cream.engine.scoring import sequence_logprobs


def _pairs(tokenizer, model, consistency):
    rows = []
    for i, (q, good, bad) in enumerate([("What is 2+2?", "4", "five"), ("Name a colour.", "Blue.", "Seven"),
                                         ("Say hi.", "Hi there!", "no")]):
        prompt = chat_prompt_ids(tokenizer, q)
        chosen = tokenizer(good + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rejected = tokenizer(bad + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ref = sequence_logprobs(model, [(prompt, chosen), (prompt, rejected)], 2, tokenizer.pad_token_id, "ref")
        rows.append(Pair(id=f"p{i}", task="gsm8k", answer="4", prompt=q, chosen=good, rejected=bad, chosen_reward=1.0,
                         rejected_reward=0.0, consistency=consistency[i], chosen_correct=True, rejected_correct=False,
                         prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected,
                         ref_chosen_logps=ref[0] - 0.5 * i, ref_rejected_logps=ref[1] + 0.25 * i))
    return rows


@pytest.fixture()
def setup(tiny_model_dir, tmp_path):
    model_cfg = ModelConfig(name="tiny", source=ModelSource.tiny)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir), model_cfg)
    return model_cfg, tokenizer, model, tmp_path


def _trainer(setup, consistency, loss=CREAM, trl_loss_type="sigmoid"):
    model_cfg, tokenizer, model, tmp_path = setup
    path = tmp_path / "pairs.jsonl"
    write_rows(path, _pairs(tokenizer, model, consistency))
    cfg = DPOConfig(lora=None, batch_size=3, lr=1e-3)
    args = training_args(cfg, tmp_path / "out", 0, 3)
    args.loss_type = [trl_loss_type]  # what TRL's own `_compute_loss` computes, to compare with
    trainer = CreamDPOTrainer(model=model, args=args, train_dataset=examples_dataset(path, loss),
                              processing_class=tokenizer, data_collator=ExampleCollator(tokenizer.pad_token_id, loss),
                              loss=loss)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    return trainer, batch


def test_target_one_equals_trl_sigmoid_loss_on_the_same_batch(setup):
    trainer, batch = _trainer(setup, [1.0, 1.0, 1.0])
    model = trainer.model
    ours = trainer._compute_loss(model, dict(batch), False)
    stock_inputs = {k: v for k, v in batch.items() if k not in ("target", "weight", "penalty", "penalty_target")}
    stock = DPOTrainer._compute_loss(trainer, model, stock_inputs, False)  # TRL's own sigmoid loss
    assert ours.item() == pytest.approx(stock.item(), rel=1e-6)


def test_sppo_hard_equals_trls_sppo_hard_on_the_same_batch(setup):
    loss = LOSSES.get("sppo_hard")
    trainer, batch = _trainer(setup, [1.0, 1.0, 1.0], loss, "sppo_hard")
    ours = trainer._compute_loss(trainer.model, dict(batch), False)
    stock = DPOTrainer._compute_loss(trainer, trainer.model, {k: v for k, v in batch.items() if k != "weight"}, False)
    assert ours.item() == pytest.approx(stock.item(), rel=1e-6)
    assert ours.item() > 1.0  # (0.5 / beta)^2 = 25 per side at the start: not a vacuous match


def test_each_pairs_target_reaches_the_loss(setup):
    consistency = [0.9, 0.2, 0.5]
    trainer, batch = _trainer(setup, consistency)
    assert batch["target"].tolist() == pytest.approx(consistency)  # with strength 1 the label is C
    model = trainer.model
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100), fused_lm_head=True)
        logps = out.log_probs.sum(1)
        chosen, rejected = logps.chunk(2)
        h = trainer.beta * ((chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"]))
        expected = cream_loss(h, batch["target"]).mean()
        ours = trainer._compute_loss(model, dict(batch), False)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    stock = DPOTrainer._compute_loss(trainer, model, {k: v for k, v in batch.items()
                                                      if k not in ("target", "weight", "penalty", "penalty_target")}, False)
    assert abs(ours.item() - stock.item()) > 1e-4  # a target < 1 really changes the loss


def test_training_runs_through_the_hook_and_saves_an_adapter(setup, tiny_model_dir):
    model_cfg, tokenizer, model, tmp_path = setup
    path = tmp_path / "pairs.jsonl"
    write_rows(path, _pairs(tokenizer, model, [0.7, 0.7, 0.7]))
    cfg = DPOConfig(batch_size=3, lr=1e-3, lora=LoraConfig(r=4, alpha=8))
    policy = ModelRef("m1", str(tiny_model_dir))
    new, metrics = train(cfg, model_cfg, policy, path, tmp_path / "train", seed=0, output_name="m2")
    assert new.adapter is not None and (tmp_path / "train" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "train" / "adapter" / "ref").exists()  # TRL's frozen copy is not saved
    assert metrics["dpo/steps"] == 1 and metrics["dpo/pairs"] == 3
    assert metrics["dpo/forward_sequences"] == 2 * 3  # chosen and rejected under the policy; no reference pass
    assert metrics["dpo/loss"] > 0
