"""cream.data.load: hub converters, local loading and its errors, prompts, shards, SFT examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cream.data import load as data
from cream.config import DataConfig
from cream.config.data import DataSource
from cream.data.load import (
    check_shards,
    convert_arc,
    convert_gsm8k,
    convert_oasst,
    convert_openbookqa,
    convert_siqa,
    convert_truthfulqa,
    load_benchmark,
    load_prompts,
    load_sft_examples,
    resolve_data_dir,
    shard,
)
from cream.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def mc_row(i: int, answer: str = "B", **extra) -> dict:
    return {"id": f"q{i}", "question": f"Question {i}?", "choices": [f"opt{i}-a", f"opt{i}-b", f"opt{i}-c"],
            "labels": ["A", "B", "C"], "answer": answer, **extra}


def gsm_row(i: int) -> dict:
    solution = f"{i}+{i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"
    return {"id": f"g{i}", "question": f"What is {i} plus {i}?", "solution": solution, "answer": str(2 * i)}


def sft_row(i: int, messages: list[dict] | None = None) -> dict:
    return {"id": f"s{i}", "messages": messages or [{"role": "user", "content": f"ask {i}"},
                                                    {"role": "assistant", "content": f"reply {i}"}]}


def write_split(root: Path, name: str, split: str, content: list[dict] | str | bytes) -> Path:
    path = root / name / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, list):
        content = "".join(json.dumps(r) + "\n" for r in content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --- converters: records shaped like the hub's ------------------------------------------------


@pytest.mark.parametrize(
    "labels, answer_key, answer, kept",
    [
        (["1", "2", "3", "4"], "2", "B", True),  # numeric labels are re-lettered, originals kept
        (["A", "B", "C", "D", "E"], "E", "E", False),  # five options, already lettered
        (["A", "B", "C"], "A", "A", False),  # three options
    ],
)
def test_convert_arc(labels, answer_key, answer, kept):
    texts = [f"option {i}" for i in range(len(labels))]
    record = {"id": "Mercury_1", "question": "Which is it?", "choices": {"text": texts, "label": labels},
              "answerKey": answer_key}
    row = convert_arc(record)
    assert row["id"] == "Mercury_1" and row["question"] == "Which is it?"
    assert row["choices"] == texts
    assert row["labels"] == list("ABCDE"[: len(labels)])
    assert row["answer"] == answer
    if kept:
        assert (row["source_labels"], row["source_answer"]) == (labels, answer_key)
    else:
        assert "source_labels" not in row and "source_answer" not in row


def test_convert_openbookqa():
    record = {"id": "7-980", "question_stem": "The sun is responsible for",
              "choices": {"text": ["puppies", "children", "flowers", "plants"], "label": ["A", "B", "C", "D"]},
              "answerKey": "D"}
    assert convert_openbookqa(record) == {
        "id": "7-980", "question": "The sun is responsible for",
        "choices": ["puppies", "children", "flowers", "plants"], "labels": ["A", "B", "C", "D"], "answer": "D",
    }


@pytest.mark.parametrize("label, answer", [("1", "A"), ("2", "B"), ("3", "C")])
def test_convert_siqa(label, answer):
    record = {"context": "Cameron had a barbecue.", "question": "How would Others feel?",
              "answerA": "like attending", "answerB": "like staying home", "answerC": "a good friend", "label": label}
    assert convert_siqa(record, "validation", 7) == {
        "id": "siqa-validation-7", "question": "Cameron had a barbecue. How would Others feel?",
        "choices": ["like attending", "like staying home", "a good friend"], "labels": ["A", "B", "C"],
        "answer": answer, "context": "Cameron had a barbecue.", "query": "How would Others feel?",
    }


@pytest.mark.parametrize(
    "final, answer",
    [("1,234", "1234"), ("72", "72"), ("-3.5", "-3.5"), ("1,000,000", "1000000")],
)
def test_convert_gsm8k(final, answer):
    solution = f"She had 2*3 = <<2*3=6>>6 apples.\n#### {final}"
    row = convert_gsm8k({"question": "How many?", "answer": solution}, "train", 12)
    assert row == {
        "id": "gsm8k-train-12", "question": "How many?", "solution": solution, "answer": answer,
        "answer_raw": final, "solution_no_calc": f"She had 2*3 = 6 apples.\n#### {final}",
    }


def test_convert_gsm8k_without_final_answer_is_an_error():
    with pytest.raises(DataError, match=r"gsm8k test\[3\].*####"):
        convert_gsm8k({"question": "How many?", "answer": "no final line"}, "test", 3)


@pytest.mark.parametrize("n_choices, true_index", [(4, 0), (4, 2), (13, 12)])
def test_convert_truthfulqa(n_choices, true_index):
    choices = [f"claim {i}" for i in range(n_choices)]
    mc1 = {"choices": choices, "labels": [int(i == true_index) for i in range(n_choices)]}
    mc2 = {"choices": choices[:2], "labels": [1, 1]}
    row = convert_truthfulqa({"question": "Is it true?", "mc1_targets": mc1, "mc2_targets": mc2}, 5)
    assert row["id"] == "tqa-5" and row["question"] == "Is it true?"
    assert row["choices"] == choices
    assert row["labels"] == [chr(ord("A") + i) for i in range(n_choices)]
    assert row["answer"] == chr(ord("A") + true_index)
    assert row["mc1_targets"] == mc1 and row["mc2_targets"] == mc2


def oasst_message(message_id, parent_id, role, text, lang="en", rank=None, deleted=False) -> dict:
    return {"message_id": message_id, "parent_id": parent_id, "role": role, "text": text, "lang": lang,
            "rank": rank, "deleted": deleted}


def test_convert_oasst_keeps_english_first_turns_with_their_best_reply():
    rows = [
        oasst_message("p1", None, "prompter", "Hello?"),
        oasst_message("a1-second", "p1", "assistant", "worse reply", rank=1),
        oasst_message("a1-best", "p1", "assistant", "best reply", rank=0),
        oasst_message("p1-followup", "a1-best", "prompter", "and then?"),  # not a first turn
        oasst_message("a1-followup", "p1-followup", "assistant", "follow-up reply", rank=0),
        oasst_message("p2", None, "prompter", "Hallo?", lang="de"),  # not English
        oasst_message("a2", "p2", "assistant", "Antwort", lang="de", rank=0),
        oasst_message("p3", None, "prompter", "No ranked reply?"),
        oasst_message("a3", "p3", "assistant", "unranked", rank=None),
        oasst_message("p4", None, "prompter", "Deleted reply?"),
        oasst_message("a4", "p4", "assistant", "gone", rank=0, deleted=True),
    ]
    assert convert_oasst(rows) == [
        {"id": "oasst1-p1", "messages": [{"role": "user", "content": "Hello?"},
                                         {"role": "assistant", "content": "best reply"}]},
    ]


# --- hub loading, with datasets.load_dataset replaced -----------------------------------------------


@pytest.mark.parametrize(
    "name, split, call",
    [
        ("arc_easy", "train", ("allenai/ai2_arc", "ARC-Easy", "train")),
        ("arc_challenge", "test", ("allenai/ai2_arc", "ARC-Challenge", "test")),
        ("openbookqa", "validation", ("allenai/openbookqa", "main", "validation")),
        ("siqa", "validation", ("allenai/social_i_qa", None, "validation")),
        ("gsm8k", "test", ("openai/gsm8k", "main", "test")),
        ("gsm8k", "validation", ("openai/gsm8k", "main", "train")),
        ("truthfulqa_mc", "validation", ("truthfulqa/truthful_qa", "multiple_choice", "validation")),
        ("sft_seed", "train", ("OpenAssistant/oasst1", None, "train")),
    ],
)
def test_hub_datasets_requested(monkeypatch, name, split, call):
    calls = []
    monkeypatch.setattr("datasets.load_dataset", lambda path, config, split: calls.append((path, config, split)) or [])
    assert load_benchmark(name, split, None) == []
    assert calls == [call]


@pytest.mark.parametrize("split, ids", [("train", ["gsm8k-train-0", "gsm8k-train-1"]),
                                        ("validation", [f"gsm8k-train-{i}" for i in range(2, 502)])])
def test_hub_gsm8k_validation_is_the_tail_of_train(monkeypatch, split, ids):
    records = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(502)]
    monkeypatch.setattr("datasets.load_dataset", lambda *args, **kwargs: records)
    rows = load_benchmark("gsm8k", split, None)
    assert [r["id"] for r in rows] == ids
    assert all(r["answer"] == r["id"].rsplit("-", 1)[1] for r in rows)


def test_hub_unreachable_tells_user_to_set_paths_data(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(DataError, match=r"no local data for siqa and the hub is unreachable: set `paths.data`"):
        load_benchmark("siqa", "train", None)


# --- local loading and its errors -------------------------------------------------------------------


def test_load_local_split(tmp_path):
    rows = [mc_row(1), mc_row(2, answer="C")]
    write_split(tmp_path, "arc_easy", "train", rows)
    assert load_benchmark("arc_easy", "train", tmp_path) == rows


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_split(tmp_path, "arc_easy", "train", json.dumps(mc_row(1)) + "\n\n{not json\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: malformed JSON"):
        load_benchmark("arc_easy", "train", tmp_path)


def test_invalid_utf8_names_line(tmp_path):
    path = write_split(tmp_path, "gsm8k", "train", json.dumps(gsm_row(1)).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: not valid UTF-8"):
        load_benchmark("gsm8k", "train", tmp_path)


@pytest.mark.parametrize(
    "name, good, field",
    [
        ("arc_easy", mc_row(2), "choices"),
        ("truthfulqa_mc", mc_row(2), "answer"),
        ("gsm8k", gsm_row(2), "answer"),
        ("gsm8k", gsm_row(2), "question"),
        ("sft_seed", sft_row(2), "messages"),
    ],
)
def test_missing_field_names_field_and_line(tmp_path, name, good, field):
    first = {"arc_easy": mc_row(1), "truthfulqa_mc": mc_row(1), "gsm8k": gsm_row(1), "sft_seed": sft_row(1)}[name]
    bad = {k: v for k, v in good.items() if k != field}
    # The blank line is skipped but still counted: the bad row is on line 3.
    path = write_split(tmp_path, name, "train", json.dumps(first) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: missing field `{field}`"):
        load_benchmark(name, "train", tmp_path)


NO_FINAL_REPLY = r"`messages` must end with an assistant reply that follows a prompt"


@pytest.mark.parametrize(
    "name, row, message",
    [
        ("siqa", mc_row(1, answer="D"), r"`answer` 'D' is not one of the labels"),
        ("siqa", {**mc_row(1), "labels": ["A", "B"]}, r"`choices` and `labels` must be lists of the same length"),
        ("sft_seed", sft_row(1, [{"role": "user", "content": "hi"}]), NO_FINAL_REPLY),
        ("sft_seed", sft_row(1, [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}]),
         NO_FINAL_REPLY),
        ("sft_seed", sft_row(1, [{"role": "user"}, {"role": "assistant", "content": "x"}]),
         r"`messages` must be a list of \{role, content\} objects"),
    ],
)
def test_invalid_row_names_line(tmp_path, name, row, message):
    path = write_split(tmp_path, name, "train", [row])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: {message}"):
        load_benchmark(name, "train", tmp_path)


def test_missing_split_names_path_and_available_splits(tmp_path):
    write_split(tmp_path, "openbookqa", "train", [mc_row(1)])
    with pytest.raises(DataError) as e:
        load_benchmark("openbookqa", "test", tmp_path)
    message = str(e.value)
    assert str(tmp_path / "openbookqa" / "test.jsonl") in message
    assert "benchmark `openbookqa`, split `test`" in message and "available splits: train" in message


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_split_is_an_error(tmp_path, content):
    path = write_split(tmp_path, "siqa", "train", content)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: benchmark `siqa` split `train` is empty"):
        load_benchmark("siqa", "train", tmp_path)


def test_unknown_benchmark_lists_known_ones(tmp_path):
    with pytest.raises(DataError) as e:
        load_benchmark("mmlu", "train", tmp_path)
    assert "unknown benchmark `mmlu`" in str(e.value)
    assert all(name in str(e.value) for name in data.BENCHMARKS)


# --- data directory ---------------------------------------------------------------------------------


def test_explicit_data_dir_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "bench").mkdir()
    assert resolve_data_dir("~/bench", DataSource.local) == tmp_path.resolve() / "bench"
    assert resolve_data_dir("~/bench", DataSource.auto) == tmp_path.resolve() / "bench"
    assert resolve_data_dir("~/bench", DataSource.hub) is None


@pytest.mark.parametrize("source", [DataSource.local, DataSource.auto])
def test_explicit_missing_data_dir_is_an_error(tmp_path, source):
    with pytest.raises(DataError, match=r"data directory .*/nowhere does not exist \(config key `paths.data`\)"):
        resolve_data_dir(str(tmp_path / "nowhere"), source)


@pytest.mark.parametrize(
    "exists, source, expected",
    [
        (True, DataSource.auto, "default"),
        (True, DataSource.local, "default"),
        (True, DataSource.hub, None),
        (False, DataSource.auto, None),
        (False, DataSource.hub, None),
    ],
)
def test_default_data_dir(tmp_path, monkeypatch, exists, source, expected):
    default = tmp_path / "shared" / "benchmarks"
    if exists:
        default.mkdir(parents=True)
    monkeypatch.setattr(data, "_default_data_dir", lambda: default)
    assert resolve_data_dir(None, source) == (default if expected == "default" else None)


def test_local_source_without_any_data_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_default_data_dir", lambda: tmp_path / "missing")
    with pytest.raises(DataError, match=r"set `paths.data`"):
        resolve_data_dir(None, DataSource.local)


def test_default_data_dir_is_beside_the_repository():
    assert data._default_data_dir() == SHARED


# --- prompts ----------------------------------------------------------------------------------------


@pytest.fixture
def prompt_dir(tmp_path) -> Path:
    write_split(tmp_path, "arc_easy", "train", [mc_row(i, answer="ABC"[i % 3]) for i in range(6)])
    write_split(tmp_path, "gsm8k", "train", [gsm_row(i) for i in range(1, 5)])
    write_split(tmp_path, "truthfulqa_mc", "train", [mc_row(i, answer="A") for i in range(4)])
    return tmp_path


def prompt_config(**overrides) -> DataConfig:
    return DataConfig(**{"prompt_sets": ["arc_easy", "gsm8k"], "prompt_split": "train", **overrides})


def test_prompts_have_unique_task_prefixed_ids(prompt_dir):
    prompts = load_prompts(prompt_config(), prompt_dir, seed=0)
    ids = [p["id"] for p in prompts]
    assert len(ids) == len(set(ids)) == 10
    assert {p["task"] for p in prompts} == {"arc_easy", "gsm8k"}
    assert all(p["id"].startswith(p["task"] + "/") for p in prompts)


def test_multiple_choice_prompt_shows_lettered_options_and_keeps_answer_aside(prompt_dir):
    by_id = {p["id"]: p for p in load_prompts(prompt_config(), prompt_dir, seed=0)}
    prompt = by_id["arc_easy/q4"]
    assert prompt["prompt"] == "Question 4?\nA. opt4-a\nB. opt4-b\nC. opt4-c"
    assert prompt["answer"] == "B"


def test_gsm8k_prompt_hides_solution_and_answer(prompt_dir):
    by_id = {p["id"]: p for p in load_prompts(prompt_config(), prompt_dir, seed=0)}
    prompt = by_id["gsm8k/g3"]
    assert prompt["answer"] == "6"
    assert prompt["prompt"] == "What is 3 plus 3?"
    assert "6" not in prompt["prompt"] and "####" not in prompt["prompt"]


def test_truthfulqa_answer_is_not_always_first(prompt_dir):
    prompts = load_prompts(prompt_config(prompt_sets=["truthfulqa_mc"]), prompt_dir, seed=0)
    # Every source row lists its true option first; the shown order must not give that away.
    assert {p["answer"] for p in prompts} != {"A"}


def test_prompt_order_is_deterministic_in_the_seed(prompt_dir):
    ids = lambda seed: [p["id"] for p in load_prompts(prompt_config(), prompt_dir, seed)]  # noqa: E731
    assert ids(3) == ids(3)
    assert ids(3) != ids(4)
    assert sorted(ids(3)) == sorted(ids(4))


def test_duplicate_row_ids_are_an_error(tmp_path):
    write_split(tmp_path, "arc_easy", "train", [mc_row(1), mc_row(2), mc_row(1)])
    with pytest.raises(DataError, match=r"benchmark `arc_easy` split `train` has the id `q1` more than once"):
        load_prompts(prompt_config(prompt_sets=["arc_easy"]), tmp_path, seed=0)


@pytest.mark.parametrize(
    "prompt_sets, message",
    [
        (["arc_easy", "gsm8k", "arc_easy"], r"`data.prompt_sets` lists arc_easy more than once"),
        (["sft_seed"], r"`sft_seed` holds conversations, not questions \(config key `data.prompt_sets`\)"),
    ],
)
def test_bad_prompt_sets_are_errors(prompt_dir, prompt_sets, message):
    with pytest.raises(DataError, match=message):
        load_prompts(prompt_config(prompt_sets=prompt_sets), prompt_dir, seed=0)


# --- shards -----------------------------------------------------------------------------------------


def test_shards_are_disjoint_and_cover_in_order():
    prompts = [{"id": str(i)} for i in range(10)]
    shards = [shard(prompts, t, 3) for t in (1, 2, 3)]
    assert all(len(s) == 3 for s in shards)
    assert [p for s in shards for p in s] == prompts[:9]
    ids = [p["id"] for s in shards for p in s]
    assert len(ids) == len(set(ids))


def test_shard_beyond_the_prompts_is_an_error():
    prompts = [{"id": str(i)} for i in range(10)]
    expected = (r"shard 4 needs prompts 10..12 but only 10 prompts are available "
                r"\(config keys `data.shard_size`, `iterations`\)")
    with pytest.raises(DataError, match=expected):
        shard(prompts, 4, 3)


def test_shard_iterations_are_one_based():
    with pytest.raises(ValueError, match="1-based"):
        shard([{"id": "0"}], 0, 1)


@pytest.mark.parametrize(
    "n_prompts, iterations, shard_size, error",
    [
        (10, 3, 3, None),
        (9, 3, 3, None),
        (8, 3, 3, r"shard 3 needs prompts 7..9 but only 8 prompts"),
        (5, 4, 2, r"shard 3 needs prompts 5..6 but only 5 prompts"),  # reports the first shard that fails
        (0, 1, 16, r"shard 1 needs prompts 1..16 but only 0 prompts"),
    ],
)
def test_check_shards(n_prompts, iterations, shard_size, error):
    if error is None:
        check_shards(n_prompts, iterations, shard_size)
        assert len(shard([{}] * n_prompts, iterations, shard_size)) == shard_size
    else:
        with pytest.raises(DataError, match=error):
            check_shards(n_prompts, iterations, shard_size)


# --- SFT examples -----------------------------------------------------------------------------------


def test_sft_examples_split_prompt_from_final_reply(tmp_path):
    multi_turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine"}]
    write_split(tmp_path, "sft_seed", "train", [sft_row(1), sft_row(2, multi_turn)])
    by_id = {e["id"]: e for e in load_sft_examples("train", tmp_path, None, seed=0)}
    assert by_id["s1"]["prompt"] == [{"role": "user", "content": "ask 1"}]
    assert by_id["s1"]["completion"] == [{"role": "assistant", "content": "reply 1"}]
    assert by_id["s2"]["prompt"] == multi_turn[:3]
    assert by_id["s2"]["completion"] == multi_turn[3:]


@pytest.mark.parametrize("max_examples, count", [(None, 20), (5, 5), (50, 20)])
def test_sft_examples_are_shuffled_and_cut(tmp_path, max_examples, count):
    write_split(tmp_path, "sft_seed", "train", [sft_row(i) for i in range(20)])
    ids = lambda seed: [e["id"] for e in load_sft_examples("train", tmp_path, max_examples, seed)]  # noqa: E731
    assert len(ids(0)) == count
    assert ids(0) == ids(0)
    assert ids(0) != ids(1)


def test_sft_row_without_final_reply_names_line(tmp_path):
    path = write_split(tmp_path, "sft_seed", "train",
                       [sft_row(1), sft_row(2, [{"role": "user", "content": "unanswered"}])])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: `messages` must end with an assistant reply"):
        load_sft_examples("train", tmp_path, None, seed=0)


# --- the real shared data ---------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


@needs_shared
@pytest.mark.parametrize(
    "name, split, rows",
    [
        ("arc_easy", "validation", 570),
        ("arc_challenge", "train", 1119),
        ("openbookqa", "validation", 500),
        ("siqa", "validation", 1954),
        ("gsm8k", "validation", 500),
        ("truthfulqa_mc", "validation", 817),
        ("sft_seed", "train", 389),
    ],
)
def test_shared_benchmarks_load(name, split, rows):
    assert len(load_benchmark(name, split, SHARED)) == rows


@needs_shared
def test_shared_arc_rows_round_trip_through_the_converter():
    # Rebuild hub-shaped records from the local rows: the converter must give the rows back exactly.
    rows = load_benchmark("arc_easy", "validation", SHARED)
    assert any("source_labels" in r for r in rows)
    for r in rows:
        record = {"id": r["id"], "question": r["question"], "answerKey": r.get("source_answer", r["answer"]),
                  "choices": {"text": r["choices"], "label": r.get("source_labels", r["labels"])}}
        assert convert_arc(record) == r


@needs_shared
def test_shared_gsm8k_rows_round_trip_through_the_converter():
    for r in load_benchmark("gsm8k", "validation", SHARED):
        index = int(r["id"].rsplit("-", 1)[1])
        assert convert_gsm8k({"question": r["question"], "answer": r["solution"]}, "train", index) == r


@needs_shared
def test_shared_default_prompts_fill_two_shards():
    cfg = DataConfig()
    prompts = load_prompts(cfg, resolve_data_dir(None, DataSource.auto), seed=0)
    assert len({p["id"] for p in prompts}) == len(prompts) > 2 * cfg.shard_size
    check_shards(len(prompts), 2, cfg.shard_size)
