"""lm-eval's log-likelihood requests with each context encoded once (`eval.backend: torch`).

In a multiple-choice task every option of a question has the same context. lm-eval's HF model runs
each (context, option) as a whole sequence; here, on the reward stage's kernel (`cream.scoring.shared_prefix_forward`), the
context is encoded once per batch, its KV cache repeated for its options, and only the options run on
top of it, in chunks of similar length. Each distinct (context, continuation) is scored once, and a context
whose continuations are spread over the requests of several tasks or options is still encoded once per
batch. A preamble that many contexts start with (a fixed few-shot primer) is encoded once for all of them.

Tokenization is lm-eval's own (`loglikelihood` and `_encode_pair` are not overridden; this replaces
`_loglikelihood_tokens`), and so is the left truncation to `max_length`: the scored token windows are
the HF model's, the values equal to float rounding, and `is_greedy` is computed from the same logits.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cream.scoring import Primer, encode_primer, shared_prefix_forward

AUTO_BATCH_SIZE = 32  # continuations per batch under lm-eval's batch_size "auto"
# Contexts sharing this many first tokens (TruthfulQA's 6-shot preamble: 172) encode them once for all batches.
PRIMER_MIN_TOKENS = 32
Sequence = tuple[tuple[int, ...], tuple[int, ...]]  # (context tokens, continuation tokens)


def scoring_window(context: list[int], continuation: list[int], max_length: int) -> Sequence:
    """The (context, continuation) lm-eval's causal HF model scores: the whole sequence cut to its last
    `max_length + 1` tokens (the context truncated from the left); the continuation kept whole."""
    if not context or not continuation:
        raise ValueError("a log-likelihood request needs a non-empty context and continuation")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's max_length {max_length}")
    whole = (list(context) + list(continuation))[-(max_length + 1):]
    return tuple(whole[: len(whole) - len(continuation)]), tuple(continuation)


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def primers(contexts: list[tuple[int, ...]], min_tokens: int = PRIMER_MIN_TOKENS) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each context's primer: the first tokens it shares with other contexts (a few-shot preamble), when at least
    `min_tokens` long; `()` for none. In sorted order the contexts that share a primer are neighbours: a run of
    neighbours sharing `min_tokens` gets the tokens all of them share, leaving each at least one of its own."""
    ordered = sorted(set(contexts))
    result: dict[tuple[int, ...], tuple[int, ...]] = {}
    run = ordered[:1]
    for previous, context in zip(ordered, ordered[1:] + [()]):
        if context and _common_length(previous, context) >= min_tokens:
            run.append(context)
            continue
        shared = min((_common_length(a, b) for a, b in zip(run, run[1:])), default=0)
        shared = min(shared, min(len(c) for c in run) - 1)
        primer = run[0][:shared] if shared >= min_tokens else ()
        result.update((c, primer) for c in run)
        run = [context]
    return result


Batch = tuple[tuple[int, ...], list[tuple[tuple[int, ...], list[tuple[int, ...]]]]]  # (primer, [(context, [continuation, ...]), ...])


def plan_batches(sequences: list[Sequence], batch_size: int, min_primer: int = PRIMER_MIN_TOKENS) -> list[Batch]:
    """Distinct sequences grouped by context, whole groups per batch of about `batch_size` continuations; the
    contexts of a batch share its primer (`primers`), in context-length order: [(primer, [(context,
    [continuation, ...]), ...]), ...]."""
    groups: dict[tuple[int, ...], dict[tuple[int, ...], None]] = {}
    for context, continuation in sequences:
        groups.setdefault(context, {})[continuation] = None  # a dict keeps first-seen order, no duplicates
    primer_of = primers(list(groups), min_primer)
    batches = []
    for primer in dict.fromkeys(sorted(primer_of.values())):
        current, size = [], 0
        for context in sorted((c for c in groups if primer_of[c] == primer), key=len):
            current.append((context, list(groups[context])))
            size += len(groups[context])
            if size >= batch_size:
                batches.append((primer, current))
                current, size = [], 0
        batches += [(primer, current)] if current else []
    return batches


def score_batch(model, batch: list[tuple[tuple[int, ...], list[tuple[int, ...]]]], pad_id: int,
                softmax_dtype=None, primer: Primer | None = None) -> list[tuple[float, bool]]:
    """(summed log-prob, is_greedy) of each continuation of `batch`, in order, from the scoring kernel's
    shared-prefix forward (`cream.scoring.shared_prefix_forward`)."""
    contexts = [list(context) for context, _ in batch]
    owner = [g for g, (_, continuations) in enumerate(batch) for _ in continuations]
    continuations = [list(c) for _, cs in batch for c in cs]
    results: list[tuple[float, bool]] = [(0.0, False)] * len(continuations)
    for rows, out in shared_prefix_forward(model, contexts, owner, continuations, pad_id, primer=primer):
        with torch.inference_mode():
            log_probs = F.log_softmax(out.logits, dim=-1, dtype=softmax_dtype)
        for k, j in enumerate(rows):
            scored = log_probs[k, : len(continuations[j])]  # position i predicts continuation[i]
            tokens = torch.tensor(continuations[j], device=scored.device)
            value = float(scored.gather(1, tokens[:, None]).sum())
            results[j] = (value, bool((scored.argmax(dim=-1) == tokens).all()))
    return results


def shared_context_loglikelihoods(model, sequences: list[Sequence], batch_size: int, pad_id: int,
                                  softmax_dtype=None, autocast=contextlib.nullcontext, desc: str = "log-likelihoods",
                                  disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """(summed log-prob, is_greedy) of each (context, continuation), in input order; each context
    (at least one token) encoded once per batch, each primer once, and each distinct sequence scored once."""
    values: dict[Sequence, tuple[float, bool]] = {}
    primer = None
    for primer_tokens, batch in tqdm(plan_batches(sequences, batch_size), desc=desc, unit="batch", disable=disable_tqdm):
        with autocast():
            if primer_tokens and (primer is None or primer.tokens != primer_tokens):
                primer = encode_primer(model, primer_tokens)  # batches of one primer come in a row
            scored = score_batch(model, batch, pad_id, softmax_dtype, primer if primer_tokens else None)
        pairs = [(context, c) for context, cs in batch for c in cs]
        values.update(zip(pairs, scored))
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
