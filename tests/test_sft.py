"""SFT labels are -100 on the prompt and on padding (the published code padded with the pad token id)."""

import torch

from cream.config import ModelConfig, SFTConfig
from cream.config.engine import ModelSource
from cream.config.training import LoraConfig
from cream.data.load import load_sft_examples
from cream.runs.model_ref import ModelRef
from cream.training.sft_trainer import build_trainer


def test_labels_mask_prompt_and_padding(tiny_model_dir, fixture_data, tmp_path):
    examples = load_sft_examples("train", fixture_data, 4, seed=0)
    trainer = build_trainer(SFTConfig(max_length=256, lora=LoraConfig(r=4, alpha=8)),
                            ModelConfig(name="tiny", source=ModelSource.tiny),
                            ModelRef("m0", str(tiny_model_dir)), examples, tmp_path, seed=0)
    tokenizer = trainer.processing_class
    rows = [trainer.train_dataset[i] for i in range(len(examples))]
    batch = trainer.data_collator(rows)
    labels, input_ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert len({len(r["input_ids"]) for r in rows}) > 1, "examples of different lengths are needed to see padding"
    for i, (row, example) in enumerate(zip(rows, examples)):
        # the prompt as the model sees it, independently of the trainer's own bookkeeping
        prompt_text = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        n = len(row["input_ids"])
        assert 0 < n_prompt < n
        assert (labels[i, :n_prompt] == -100).all()  # the prompt is not learned
        assert torch.equal(labels[i, n_prompt:n], input_ids[i, n_prompt:n])  # the reply is, end of turn included
        assert (labels[i, n:] == -100).all() and (attention[i, n:] == 0).all()  # padding is -100, not pad_token_id
