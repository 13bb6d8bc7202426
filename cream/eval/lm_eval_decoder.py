"""lm-eval's HF model with generation on cream's decoder (`eval.backend: torch`).

Generation changes in `_model_generate` only: lm-eval still builds the prompts, batches and
truncates them and cuts each output at its stop strings. Log-likelihood requests encode each context
once (`SharedContextLoglikelihood`, cream/lm_eval_scoring.py). The decoder stops
a row at the end-of-turn token only, so a row may run past a stop string; lm-eval's cut makes the
text the same as under transformers' `generate` (greedy decoding is deterministic).
"""

from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM

from cream.engine.decode import Decoder
from cream.eval.lm_eval_scoring import SharedContextLoglikelihood


class DecoderLM(SharedContextLoglikelihood, HFLM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._decoder: Decoder | None = None  # built at the first generation request

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs) -> torch.Tensor:
        if self._decoder is None:
            self._decoder = Decoder(self.model, self.model.dtype)
        mask = kwargs.get("attention_mask", torch.ones_like(context))
        prompts = [row[m.bool()].tolist() for row, m in zip(context, mask)]  # left padding removed
        sampled = kwargs.get("do_sample") and kwargs.get("temperature", 0.0) > 0
        generator = torch.Generator().manual_seed(int(kwargs.get("seed", 0) or 0))
        generated = self._decoder.generate(
            prompts, 1, max_length - context.shape[1], kwargs["temperature"] if sampled else 0.0,
            kwargs.get("top_p", 1.0) or 1.0, self.eot_token_id, generator,
        )
        width = max(len(g) for g in generated)
        pad = self.tokenizer.pad_token_id
        continuation = torch.tensor([g + [pad] * (width - len(g)) for g in generated], dtype=context.dtype,
                                    device=context.device)
        return torch.cat([context, continuation], dim=1)
