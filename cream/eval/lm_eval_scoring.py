"""lm-eval's log-likelihood requests with each context encoded once (`eval.backend: torch`).

In a multiple-choice task every option of a question has the same context. lm-eval's HF model runs
each (context, option) as a whole sequence; here, on the reward stage's kernel (`cream.engine.scoring`), a
context and its options run as one packed row, each option attending to the context and to itself. Each
distinct (context, continuation) is scored once, a context whose continuations are spread over the
requests of several tasks is still one row, and a preamble that many contexts start with (TruthfulQA's
fixed 6-shot primer) is encoded once for all of them.

Tokenization is lm-eval's own (`loglikelihood` and `_encode_pair` are not overridden; this replaces
`_loglikelihood_tokens`), and so is the left truncation to `max_length`: the scored token windows are
the HF model's, the values equal to float rounding, and `is_greedy` is computed from the same logits.
"""

from __future__ import annotations

import contextlib

import torch

from cream.engine.scoring import Sequence, score_sequences

AUTO_BATCH_SIZE = 32  # continuations per batch under lm-eval's batch_size "auto"


def scoring_window(context: list[int], continuation: list[int], max_length: int) -> Sequence:
    """The (context, continuation) lm-eval's causal HF model scores: the whole sequence cut to its last
    `max_length + 1` tokens (the context truncated from the left); the continuation kept whole."""
    if not context or not continuation:
        raise ValueError("a log-likelihood request needs a non-empty context and continuation")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's max_length {max_length}")
    whole = (list(context) + list(continuation))[-(max_length + 1):]
    return tuple(whole[: len(whole) - len(continuation)]), tuple(continuation)


def shared_context_loglikelihoods(model, sequences: list[Sequence], batch_size: int, pad_id: int,
                                  softmax_dtype=None, autocast=contextlib.nullcontext, desc: str = "log-likelihoods",
                                  disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """(summed log-prob, is_greedy) of each (context, continuation), in input order, from the scoring kernel."""
    values = score_sequences(model, sequences, batch_size, pad_id, softmax_dtype, autocast, desc, disable_tqdm)
    return [values[s] for s in sequences]


class SharedContextLoglikelihood:
    """Mixin for lm-eval's `HFLM`: `_loglikelihood_tokens` (under `loglikelihood` and
    `loglikelihood_rolling`) on `shared_context_loglikelihoods`, for causal models."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        sequences = [scoring_window(context, continuation, self.max_length) for _, context, continuation in requests]
        batch_size = override_bs or self.batch_size
        # lm-eval's "auto" probes memory with whole sequences; contexts shared, a fixed batch does
        batch_size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else AUTO_BATCH_SIZE
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id

        def autocast():
            return torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                  enabled=self.mixed_precision_dtype is not None)

        results = shared_context_loglikelihoods(
            self.model, sequences, batch_size, pad_id, self.softmax_dtype, autocast,
            desc="Running loglikelihood requests (contexts shared)", disable_tqdm=disable_tqdm or self.rank != 0,
        )
        for (request, _, _), answer in zip(requests, results):
            if request is not None:  # loglikelihood_rolling's windows carry None, cached per document
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return results
