"""The `torch` sampling backend: a lean batched decoder for Llama-architecture models.

Why not transformers' `generate`: with a 135M model on a CPU its per-step overhead (a cache that
grows by concatenation, SDPA's flash kernel at query length 1, logits processors, rows that keep
decoding after their end of turn) costs several times the matmuls themselves (BENCHMARKS.md).
Here the weights of the active model (LoRA merged in) are copied once in the sampling dtype with
q/k/v and gate/up fused; each prompt is encoded once and its KV cache repeated for its n samples;
the cache is preallocated; finished rows leave the batch; every tensor, the tokens included, stays
on the model's device until the end. Top-p is exact: candidates come from a top-k, and rows whose
top-k holds less than `top_p` of the mass fall back to a full sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cream.errors import ConfigError

SUPPORTED = ("llama",)  # decoder layout implemented below (Llama 2/3, SmolLM2)
CANDIDATES = (64, 1024, 1 << 62)  # top-k tried in turn for the nucleus; the last means all
GREEDY_CHECK = 8  # greedy decoding: steps between the host's looks for finished rows


def _effective_weight(module: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The weight the module applies now: a LoRA layer's active adapters merged, none when disabled."""
    if isinstance(module, torch.nn.Linear):
        return module.weight.detach().to(dtype)
    base = getattr(module, "base_layer", None)
    if not isinstance(base, torch.nn.Linear) or not hasattr(module, "get_delta_weight"):
        raise ConfigError(f"config key `sampling.backend`: the torch decoder cannot read weights of {type(module).__name__}; use hf")
    weight = base.weight.detach().clone()
    if not module.disable_adapters and not module.merged:
        for name in module.active_adapters:
            if name in module.lora_A:
                weight += module.get_delta_weight(name)
    return weight.to(dtype)


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class Decoder:
    """The model's current weights in `dtype`, ready for batched sampling."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = lm.config
        if config.model_type not in SUPPORTED:
            raise ConfigError(
                f"config key `sampling.backend`: the torch decoder supports {', '.join(SUPPORTED)} models, "
                f"not {config.model_type!r}; set sampling.backend=hf"
            )
        if getattr(config, "mlp_bias", False) or getattr(config, "attention_bias", False):
            raise ConfigError("config key `sampling.backend`: the torch decoder has no projection biases; set sampling.backend=hf")
        inner = lm.model
        self.dtype = dtype
        self.device = inner.embed_tokens.weight.device  # every tensor of `generate` is made here
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.rotary = inner.rotary_emb  # computes cos/sin for any position, whatever the rope scaling
        self.embed = inner.embed_tokens.weight.detach().to(dtype)
        self.norm = inner.norm.weight.detach().to(dtype)
        self.lm_head = _effective_weight(lm.lm_head, dtype)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                input_norm=layer.input_layernorm.weight.detach().to(dtype),
                qkv=torch.cat([_effective_weight(m, dtype) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]),
                o=_effective_weight(attn.o_proj, dtype),
                post_norm=layer.post_attention_layernorm.weight.detach().to(dtype),
                gate_up=torch.cat([_effective_weight(m, dtype) for m in (mlp.gate_proj, mlp.up_proj)]),
                down=_effective_weight(mlp.down_proj, dtype),
            ))

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # in fp32 as transformers does, then back
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _step(self, ids: torch.Tensor, positions: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]],
              start: int, mask: torch.Tensor) -> torch.Tensor:
        """Logits of the last position. `ids` (B, L) are written to cache slots start..start+L-1;
        `mask` (B, 1, L, slots) says which cache slots each new position may attend to."""
        batch, length = ids.shape
        end = start + length
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos.to(self.dtype)[:, None], sin.to(self.dtype)[:, None]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        group = self.heads // self.kv_heads
        for layer, (k_cache, v_cache) in zip(self.layers, cache):
            qkv = F.linear(self._rms(x, layer.input_norm), layer.qkv)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = self._rope(q.view(batch, length, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k_cache[:, :, start:end] = self._rope(k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v_cache[:, :, start:end] = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            # grouped-query attention without repeating K/V: the query heads of a group share a KV head
            q = q.reshape(batch, self.kv_heads, group * length, self.head_dim)
            slots = k_cache.shape[2]
            scores = q @ k_cache.transpose(-1, -2) * self.head_dim**-0.5
            scores = scores.view(batch, self.kv_heads, group, length, slots).masked_fill(~mask[:, :, None], float("-inf"))
            weights = torch.softmax(scores.float(), dim=-1).to(self.dtype).view(batch, self.kv_heads, group * length, slots)
            out = (weights @ v_cache).view(batch, self.heads, length, self.head_dim)
            x = x + F.linear(out.transpose(1, 2).reshape(batch, length, q_size), layer.o)
            gate, up = F.linear(self._rms(x, layer.post_norm), layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        return F.linear(self._rms(x[:, -1], self.norm), self.lm_head).float()

    @torch.inference_mode()
    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_p: float,
                 eos_id: int, generator: torch.Generator) -> list[list[int]]:
        """n continuations of each prompt (prompt-major order), each up to and including `eos_id`.

        Every tensor lives on the model's device. The step loop writes each step's tokens into a
        preallocated (rows, max_new_tokens) buffer on the device; the host reads the tokens once, at
        the end. When sampling, the host reads one number per step (how many rows finished: the
        batch it drops them from decides which random draw each row gets, so outputs stay those of
        a given seed); greedy decoding on a GPU draws nothing and looks every `GREEDY_CHECK` steps.
        """
        if max_new_tokens <= 0:
            return [[] for _ in range(len(prompt_ids) * n)]
        device = self.device
        width = max(len(p) for p in prompt_ids)
        total = width + max_new_tokens
        pads = torch.tensor([width - len(p) for p in prompt_ids], device=device)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompt_ids], device=device)  # pads: any id, masked
        slots = torch.arange(total, device=device)
        valid = slots[None, :] >= pads[:, None]  # (prompts, slots): pads are never attended to
        positions = (slots[None, :width] - pads[:, None]).clamp(min=0)
        causal = slots[:, None] >= slots[None, :]
        # a padding query attends to itself only, so its (discarded) softmax is never empty
        prefill_mask = (causal[None, :width] & valid[:, None]) | torch.eye(width, total, dtype=torch.bool, device=device)[None]
        # zeros, not empty: attention reads the whole cache (contiguous, no copies) and masks unwritten slots
        shape = (len(prompt_ids), self.kv_heads, total, self.head_dim)
        cache = [(torch.zeros(shape, dtype=self.dtype, device=device), torch.zeros(shape, dtype=self.dtype, device=device))
                 for _ in self.layers]
        logits = self._step(ids, positions, cache, 0, prefill_mask[:, None])
        # one prompt encoding serves its n samples: repeat the cache rows, not the prompt
        rows = torch.arange(len(prompt_ids), device=device).repeat_interleave(n)
        cache = [(k[rows], v[rows]) for k, v in cache]
        logits, valid, pads = logits[rows], valid[rows], pads[rows]
        alive = torch.arange(len(rows), device=device)  # output index of each row in the batch
        running = torch.ones(len(rows), dtype=torch.bool, device=device)  # rows in the batch that have not finished
        # eos-filled: a row that leaves the batch (or a batch that stops) after its end of turn reads as ended
        out = torch.full((len(rows), max_new_tokens), eos_id, dtype=torch.long, device=device)
        # on a CPU the look costs nothing; on a GPU it waits for the step, so greedy looks every few steps
        check = 1 if temperature > 0 or device.type == "cpu" else GREEDY_CHECK
        for step in range(max_new_tokens):
            tokens = sample_tokens(logits, temperature, top_p, generator)
            out[alive, step] = tokens  # a finished row's later tokens come after its eos: cut below
            running &= tokens != eos_id
            if step == max_new_tokens - 1:
                break
            if (step + 1) % check == 0:
                finished = int((~running).sum())  # the host's one look at this step
                if finished == len(running):
                    break
                # finished rows leave the batch once they are a quarter of it: each removal copies the cache
                if 4 * finished >= len(running):
                    keep = running.nonzero().squeeze(1)
                    cache = [(k[keep], v[keep]) for k, v in cache]
                    alive, tokens, valid, pads, running = alive[keep], tokens[keep], valid[keep], pads[keep], running[keep]
            slot = width + step
            mask = valid & causal[slot]
            logits = self._step(tokens[:, None], (slot - pads)[:, None], cache, slot, mask[:, None, None])
        ended = out == eos_id
        lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, max_new_tokens)  # through the first eos
        return [row[:length] for row, length in zip(out.tolist(), lengths.tolist())]


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else nucleus sampling (the smallest set of most
    likely tokens whose probability reaches `top_p`, as transformers' top-p with top_k=0).

    Sorting the whole vocabulary every step costs more than the model's forward at batch 64, so the
    nucleus is looked for among the top candidates first; only rows whose candidates hold less
    than `top_p` of the mass look further.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    picked = torch.empty(len(probs), dtype=torch.long, device=probs.device)
    pending = torch.arange(len(probs), device=probs.device)
    for k in CANDIDATES:
        k = min(k, probs.shape[-1])
        values, indices = probs[pending].topk(k, dim=-1)
        enough = values.sum(-1) >= top_p if k < probs.shape[-1] else torch.ones(len(pending), dtype=torch.bool, device=probs.device)
        if bool(enough.any()):
            chosen = _nucleus_draw(values[enough], top_p, generator)
            picked[pending[enough]] = indices[enough].gather(1, chosen[:, None]).squeeze(1)
        pending = pending[~enough]
        if len(pending) == 0:
            break
    return picked


def _nucleus_draw(sorted_probs: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Index drawn within each row of descending probabilities, from the nucleus renormalised."""
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
    cumulative = sorted_probs.masked_fill(before >= top_p, 0.0).cumsum(-1)
    # drawn where the generator lives (a CPU generator gives the same draws whatever the model's device)
    uniform = torch.rand(len(sorted_probs), 1, generator=generator, device=generator.device)
    threshold = uniform.to(sorted_probs.device) * cumulative[:, -1:]
    # inverse CDF: the first index whose cumulative mass exceeds the uniform draw
    return torch.searchsorted(cumulative, threshold, right=True).clamp(max=sorted_probs.shape[-1] - 1).squeeze(1)
