"""Benchmark prompts, SFT seed examples and per-iteration shards.

Data comes from a local folder laid out like `shared/benchmarks` (schemas in its SOURCES.md), or
from the Hugging Face hub, converted to exactly the same schema by the `convert_*` functions.
Every row is validated on load, so a bad file fails here with file:line rather than mid-run.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Iterable

from cream.runs.artifacts import read_jsonl
from cream.config import DataConfig
from cream.config.data import DataSource
from cream.errors import DataError
from cream.config.prompts import LETTERS, format_question, ground_truth, is_multiple_choice

BENCHMARKS = ("arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k", "truthfulqa_mc", "sft_seed")
_REQUIRED = {
    "mc": ("id", "question", "choices", "labels", "answer"),
    "gsm8k": ("id", "question", "answer"),
    "sft_seed": ("id", "messages"),
}
# The local gsm8k `validation` split is the last 500 rows of the official train split.
_GSM8K_VALIDATION_SIZE = 500
_NO_HUB = ("no local data for {name} and the hub is unreachable: set `paths.data` to a folder "
           "laid out like shared/benchmarks (see SOURCES.md)")


def _default_data_dir() -> Path:
    """`shared/benchmarks` beside the repository."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"


def resolve_data_dir(paths_data: str | None, source: DataSource) -> Path | None:
    """The local data folder to read, or None to read from the hub."""
    source = DataSource(source)
    if paths_data:
        path = Path(paths_data).expanduser().resolve()
        if source != DataSource.hub and not path.is_dir():
            raise DataError(f"data directory {path} does not exist (config key `paths.data`)")
        return None if source == DataSource.hub else path
    path = _default_data_dir()
    if source != DataSource.hub and path.is_dir():
        return path
    if source == DataSource.local:
        raise DataError(f"data.source is `local` but no data directory was found at {path}: "
                        "set `paths.data` to a folder laid out like shared/benchmarks (see SOURCES.md)")
    return None


def load_benchmark(name: str, split: str, data_dir: Path | None) -> list[dict]:
    """Rows of one benchmark split in the SOURCES.md schema, from `data_dir` or (None) the hub."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark `{name}`; known: {', '.join(BENCHMARKS)}")
    if data_dir is None:
        return _load_hub(name, split)
    path = Path(data_dir) / name / f"{split}.jsonl"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise DataError(f"{path}: file not found (benchmark `{name}`, split `{split}`; "
                        f"available splits: {', '.join(available) or 'none'})")
    rows = _numbered_rows(path)
    if not rows:
        raise DataError(f"{path}: benchmark `{name}` split `{split}` is empty")
    for lineno, row in rows:
        _validate(row, name, f"{path}:{lineno}")
    return [row for _, row in rows]


def _numbered_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs, with read_jsonl's file:line errors and blank-line skipping."""
    rows = read_jsonl(path)
    # read_jsonl succeeded, so every line decodes; number the lines it kept the same way it does.
    with open(path, "rb") as f:
        linenos = [n for n, raw in enumerate(f, start=1) if raw.decode("utf-8").strip()]
    return list(zip(linenos, rows))


def _validate(row: dict, name: str, where: str) -> None:
    kind = "mc" if is_multiple_choice(name) else name
    for key in _REQUIRED[kind]:
        if key not in row:
            raise DataError(f"{where}: missing field `{key}`")
    if kind == "mc":
        choices, labels = row["choices"], row["labels"]
        if not isinstance(choices, list) or not isinstance(labels, list) or len(choices) != len(labels):
            raise DataError(f"{where}: `choices` and `labels` must be lists of the same length")
        if row["answer"] not in labels:
            raise DataError(f"{where}: `answer` {row['answer']!r} is not one of the labels {labels}")
    elif kind == "sft_seed":
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise DataError(f"{where}: `messages` must be a list of {{role, content}} objects")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: `messages` must end with an assistant reply that follows a prompt")


# --- hub -------------------------------------------------------------------------------------


def _hub_rows(name: str, path: str, config: str | None, split: str) -> list[dict]:
    try:
        from datasets import load_dataset

        return list(load_dataset(path, config, split=split))
    except Exception as e:  # offline, unknown split, ...: either way the user needs local data
        raise DataError(f"{_NO_HUB.format(name=name)} ({type(e).__name__}: {e})") from e


def _load_hub(name: str, split: str) -> list[dict]:
    if name in ("arc_easy", "arc_challenge"):
        config = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
        return [convert_arc(r) for r in _hub_rows(name, "allenai/ai2_arc", config, split)]
    if name == "openbookqa":
        return [convert_openbookqa(r) for r in _hub_rows(name, "allenai/openbookqa", "main", split)]
    if name == "siqa":
        return [convert_siqa(r, split, i) for i, r in enumerate(_hub_rows(name, "allenai/social_i_qa", None, split))]
    if name == "gsm8k":
        if split not in ("train", "validation"):
            return [convert_gsm8k(r, split, i) for i, r in enumerate(_hub_rows(name, "openai/gsm8k", "main", split))]
        # Same carve-up as the local folder: validation = the last rows of the official train split.
        rows = _hub_rows(name, "openai/gsm8k", "main", "train")
        cut = max(len(rows) - _GSM8K_VALIDATION_SIZE, 0)
        start, stop = (0, cut) if split == "train" else (cut, len(rows))
        return [convert_gsm8k(rows[i], "train", i) for i in range(start, stop)]
    if name == "truthfulqa_mc":
        rows = _hub_rows(name, "truthfulqa/truthful_qa", "multiple_choice", split)
        return [convert_truthfulqa(r, i) for i, r in enumerate(rows)]
    return convert_oasst(_hub_rows(name, "OpenAssistant/oasst1", None, split))


def _mc_row(row_id: str, question: str, texts: list[str], answer_index: int) -> dict:
    labels = list(LETTERS[: len(texts)])
    return {"id": row_id, "question": question, "choices": list(texts), "labels": labels,
            "answer": labels[answer_index]}


def _relettered(row_id: str, question: str, choices: dict, answer_key: str) -> dict:
    """A row from {text, label} choices, lettered by position; labels that were not already
    A, B, ... in order (ARC's `1..4`) are kept in source_labels / source_answer."""
    source_labels = list(choices["label"])
    row = _mc_row(row_id, question, choices["text"], source_labels.index(answer_key))
    if source_labels != row["labels"]:
        row["source_labels"] = source_labels
        row["source_answer"] = answer_key
    return row


def convert_arc(record: dict) -> dict:
    """An `allenai/ai2_arc` record."""
    return _relettered(record["id"], record["question"], record["choices"], record["answerKey"])


def convert_openbookqa(record: dict) -> dict:
    """An `allenai/openbookqa` (main) record."""
    return _relettered(record["id"], record["question_stem"], record["choices"], record["answerKey"])


def convert_siqa(record: dict, split: str, index: int) -> dict:
    """An `allenai/social_i_qa` record (1-based string label); the source has no ids."""
    row = _mc_row(f"siqa-{split}-{index}", f"{record['context']} {record['question']}",
                  [record["answerA"], record["answerB"], record["answerC"]], int(record["label"]) - 1)
    return {**row, "context": record["context"], "query": record["question"]}


def convert_gsm8k(record: dict, split: str, index: int) -> dict:
    """An `openai/gsm8k` (main) record; `answer` is the number after `####` without commas."""
    solution = record["answer"]
    if "####" not in solution:
        raise DataError(f"gsm8k {split}[{index}]: solution has no `#### <answer>` line")
    answer_raw = solution.rsplit("####", 1)[1].strip()
    return {
        "id": f"gsm8k-{split}-{index}",
        "question": record["question"],
        "solution": solution,
        "answer": answer_raw.replace(",", ""),
        "answer_raw": answer_raw,
        "solution_no_calc": re.sub(r"<<[^>]*>>", "", solution),
    }


def convert_truthfulqa(record: dict, index: int) -> dict:
    """A `truthfulqa/truthful_qa` (multiple_choice) record: MC1 options, plus both target sets."""
    mc1, mc2 = record["mc1_targets"], record["mc2_targets"]
    row = _mc_row(f"tqa-{index}", record["question"], mc1["choices"], list(mc1["labels"]).index(1))
    return {
        **row,
        "mc1_targets": {"choices": list(mc1["choices"]), "labels": list(mc1["labels"])},
        "mc2_targets": {"choices": list(mc2["choices"]), "labels": list(mc2["labels"])},
    }


def convert_oasst(messages_rows: Iterable[dict]) -> list[dict]:
    """`OpenAssistant/oasst1` messages -> English first-turn prompts with their rank-0 reply."""
    rows = [r for r in messages_rows if not r.get("deleted")]
    best_reply = {r["parent_id"]: r["text"] for r in rows if r["role"] == "assistant" and r.get("rank") == 0}
    return [
        {"id": f"oasst1-{r['message_id']}",
         "messages": [{"role": "user", "content": r["text"]},
                      {"role": "assistant", "content": best_reply[r["message_id"]]}]}
        for r in rows
        if r["role"] == "prompter" and r["parent_id"] is None and r.get("lang") == "en"
        and r["message_id"] in best_reply
    ]


# --- prompts, shards, SFT examples ----------------------------------------------------------------


def load_prompts(data_cfg: DataConfig, data_dir: Path | None, seed: int) -> list[dict]:
    """Unlabelled prompts of every `data.prompt_sets` benchmark, shuffled with `seed`.

    Each is {id, task, prompt, answer}; the answer is kept for diagnostics and never shown.
    """
    repeated = sorted({n for n in data_cfg.prompt_sets if data_cfg.prompt_sets.count(n) > 1})
    if repeated:
        raise DataError(f"config key `data.prompt_sets` lists {', '.join(repeated)} more than once")
    prompts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in data_cfg.prompt_sets:
        if name == "sft_seed":
            raise DataError("`sft_seed` holds conversations, not questions (config key `data.prompt_sets`)")
        for row in load_benchmark(name, data_cfg.prompt_split, data_dir):
            prompt_id = f"{name}/{row['id']}"
            if prompt_id in seen:
                raise DataError(f"benchmark `{name}` split `{data_cfg.prompt_split}` has the id "
                                f"`{row['id']}` more than once")
            seen.add(prompt_id)
            prompts.append({"id": prompt_id, "task": name, "prompt": format_question(row, name, seed),
                            "answer": ground_truth(row, name, seed)})
    random.Random(seed).shuffle(prompts)
    return prompts


def _shard_error(k: int, shard_size: int, n_prompts: int) -> DataError:
    return DataError(f"shard {k} needs prompts {(k - 1) * shard_size + 1}..{k * shard_size} but only "
                     f"{n_prompts} prompts are available (config keys `data.shard_size`, `iterations`)")


def check_shards(n_prompts: int, iterations: int, shard_size: int) -> None:
    """Fail before any model loads when `iterations` full shards do not fit in the prompts."""
    if iterations * shard_size > n_prompts:
        raise _shard_error(n_prompts // shard_size + 1, shard_size, n_prompts)


def shard(prompts: list[dict], iteration: int, shard_size: int) -> list[dict]:
    """The prompts of 1-based `iteration`: consecutive, disjoint slices of `shard_size`."""
    if iteration < 1:
        raise ValueError(f"iteration is 1-based, got {iteration}")
    if iteration * shard_size > len(prompts):
        raise _shard_error(iteration, shard_size, len(prompts))
    return prompts[(iteration - 1) * shard_size : iteration * shard_size]


def load_sft_examples(split: str, data_dir: Path | None, max_examples: int | None, seed: int) -> list[dict]:
    """`sft_seed` rows as conversational {id, prompt, completion}, shuffled with `seed`, cut to `max_examples`."""
    examples = []
    for row in load_benchmark("sft_seed", split, data_dir):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        examples.append({"id": row["id"], "prompt": messages[:-1], "completion": messages[-1:]})
    random.Random(seed).shuffle(examples)
    return examples if max_examples is None else examples[:max_examples]
