"""Tests for preference_data.py: every sign is checked against a hand-written expectation, and every bad input
against the exact one-line message train.py will print."""
import json
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from harness.preference_data import DataError, Pair, load_pairs, render_prompt


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def chat(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def moa_row(quality="A", verbosity="A", a="one two", b="one two three", post="the post", **extra):
    return {"Summary_A": chat(post, a), "Summary_B": chat(post, b), "Quality": quality, "Verbosity": verbosity,
            **extra}


def tiny_chat_tokenizer():
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tokenizer


# ----------------------------------------------------------------------------- the signed format

def test_signed_jsonl_reads_signs_per_objective_in_column_order(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"prompt": "p1", "response_a": "a1", "response_b": "b1", "raco_s_quality": 1, "raco_s_verbosity": -1},
        {"prompt": "p2", "response_a": "a2", "response_b": "b2", "raco_s_quality": -1.0, "raco_s_verbosity": "0"},
        {"prompt": "p3", "response_a": "a3", "response_b": "b3", "raco_s_quality": "+1", "raco_s_verbosity": 0},
    ])
    pairs, names = load_pairs(path)
    assert names == ["quality", "verbosity"]
    assert pairs == [Pair("p1", "a1", "b1", (1, -1)), Pair("p2", "a2", "b2", (-1, 0)), Pair("p3", "a3", "b3", (1, 0))]
    assert all(type(s) is int for pair in pairs for s in pair.signs)


def test_chosen_rejected_are_a_and_b_and_the_signs_still_decide(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"prompt": "p", "chosen": "good", "rejected": "bad",
                                 "raco_s_helpful": 1, "raco_s_short": -1}]))
    pairs, names = load_pairs(str(path))
    assert names == ["helpful", "short"]
    assert pairs == [Pair("p", "good", "bad", (1, -1))]  # 'rejected' is the one preferred for 'short'


def test_json_object_holding_a_train_list(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"train": [{"prompt": "p", "response_a": "a", "response_b": "b", "raco_s_q": 0}]}))
    assert load_pairs(str(path)) == ([Pair("p", "a", "b", (0,))], ["q"])


def test_objectives_select_and_reorder(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "response_a": "a", "response_b": "b",
                                                "raco_s_x": 1, "raco_s_y": -1, "raco_s_z": 0}])
    assert load_pairs(path, objectives=["z", "x"]) == ([Pair("p", "a", "b", (0, 1))], ["z", "x"])
    assert load_pairs(path, objectives="y,x") == ([Pair("p", "a", "b", (-1, 1))], ["y", "x"])


def test_limit_reads_only_the_first_examples(tmp_path):
    rows = [{"prompt": f"p{i}", "response_a": "a", "response_b": "b", "raco_s_q": 1} for i in range(5)]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "x.jsonl", rows), limit=2)
    assert [p.prompt for p in pairs] == ["p0", "p1"]


# ----------------------------------------------------------------------------- PKU-SafeRLHF

def test_pku_response_ids_0_and_1_become_plus_and_minus(tmp_path):
    rows = [{"prompt": "p", "response_0": "r0", "response_1": "r1", "better_response_id": 0, "safer_response_id": 1,
             "is_response_0_safe": True},
            {"prompt": "q", "response_0": "s0", "response_1": "s1", "better_response_id": 1, "safer_response_id": 0,
             "is_response_0_safe": False}]
    pairs, names = load_pairs(write_jsonl(tmp_path / "pku.jsonl", rows))
    assert names == ["helpful", "harmless"]
    assert pairs == [Pair("p", "r0", "r1", (1, -1)), Pair("q", "s0", "s1", (-1, 1))]


def test_data_format_overrides_detection(tmp_path):
    row = {"prompt": "p", "response_0": "r0", "response_1": "r1", "better_response_id": 1, "safer_response_id": 1,
           "response_a": "x", "response_b": "y", "raco_s_q": 1}
    path = write_jsonl(tmp_path / "x.jsonl", [row])
    assert load_pairs(path) == ([Pair("p", "x", "y", (1,))], ["q"])  # explicit signs win when detecting
    assert load_pairs(path, data_format="pku") == ([Pair("p", "r0", "r1", (-1, -1))], ["helpful", "harmless"])


# ----------------------------------------------------------------------------- MOA summaries

@pytest.mark.parametrize("label, sign", [
    ("A", 1), ("a", 1), ("Summary_A", 1), ("summary_a", 1), ("Summary A", 1), ("response_a", 1), (1, 1), ("1", 1),
    ("B", -1), ("b", -1), ("Summary_B", -1), ("summary-b", -1), ("response_b", -1), (2, -1), (2.0, -1),
    ("tie", 0), ("Tie", 0), ("equal", 0), ("same", 0), ("none", 0), (" None ", 0), (0, 0), ("0", 0)])
def test_moa_label_spellings(tmp_path, label, sign):
    path = write_jsonl(tmp_path / "x.jsonl", [moa_row(quality=label, verbosity=label)])
    pairs, names = load_pairs(path)
    assert names == ["quality", "conciseness"]
    assert pairs[0].signs == (sign, sign)


def test_moa_prompt_is_the_shared_prefix_and_response_the_last_message(tmp_path):
    pairs, _ = load_pairs(write_jsonl(tmp_path / "x.jsonl", [moa_row(a="short", b="a longer one")]))
    assert pairs == [Pair("user: the post\nassistant:\n", "short", "a longer one", (1, 1))]


def test_verbosity_names_the_more_concise_summary_even_if_it_is_longer(tmp_path):
    # B has more words, yet the label says B is the more concise one: conciseness prefers B (-1).
    pairs, _ = load_pairs(write_jsonl(tmp_path / "x.jsonl", [moa_row(quality="A", verbosity="B", a="x", b="x y z")]))
    assert pairs[0].signs == (1, -1)


def test_missing_verbosity_prefers_the_shorter_summary(tmp_path):
    rows = [moa_row(verbosity=None, a="one two three", b="one"),        # b shorter -> -1
            moa_row(verbosity="", a="one", b="one two three"),          # a shorter -> +1
            moa_row(verbosity="  ", a="one two", b="three four"),       # as long   ->  0
            {k: v for k, v in moa_row(a="x y z", b="x y").items() if k != "Verbosity"}]
    pairs, _ = load_pairs(write_jsonl(tmp_path / "x.jsonl", rows))
    assert [p.signs[1] for p in pairs] == [-1, 1, 0, -1]


def test_moa_plain_strings_with_a_post_column_and_faithfulness(tmp_path):
    rows = [{"post": "P", "Summary_A": "sa", "Summary_B": "sb", "Quality": "B", "Verbosity": "tie",
             "Faithfulness": "A"}]
    pairs, names = load_pairs(write_jsonl(tmp_path / "x.jsonl", rows))
    assert names == ["quality", "conciseness", "faithfulness"]
    assert pairs == [Pair("P", "sa", "sb", (-1, 0, 1))]
    assert load_pairs(str(tmp_path / "x.jsonl"), objectives=["faithfulness", "quality"])[0][0].signs == (1, -1)


@pytest.mark.parametrize("rows", [
    [{"prompt": "p", "response_0": "r0", "response_1": "r1", "better_response_id": 0, "safer_response_id": 1}],
    [moa_row(quality="B", verbosity=None, a="one two", b="one"), moa_row(quality="2", verbosity="tie")]])
def test_parquet_reads_like_jsonl_including_message_lists_and_nulls(tmp_path, rows):
    expected = load_pairs(write_jsonl(tmp_path / "x.jsonl", rows))
    assert load_pairs(write_parquet(tmp_path / "x.parquet", rows)) == expected


# ----------------------------------------------------------------------------- chat templates

def test_chat_template_renders_the_prompt_with_a_generation_prompt(tmp_path):
    tokenizer = tiny_chat_tokenizer()
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the post"}]
    row = {"Summary_A": conversation + [{"role": "assistant", "content": "A!"}],
           "Summary_B": conversation + [{"role": "assistant", "content": "B!"}], "Quality": "a", "Verbosity": "b"}
    pairs, _ = load_pairs(write_jsonl(tmp_path / "x.jsonl", [row]), tokenizer=tokenizer)
    assert pairs == [Pair("<|system|>be brief\n<|user|>the post\n<|assistant|>", "A!", "B!", (1, -1))]


def test_render_prompt_without_a_chat_template_and_for_plain_strings():
    messages = [{"role": "user", "content": "hi"}]
    assert render_prompt(messages, None) == "user: hi\nassistant:\n"
    assert render_prompt("as it is", tiny_chat_tokenizer()) == "as it is"


def test_prompt_column_messages_come_before_the_shared_prefix(tmp_path):
    # TRL's conversational rows: the prompt column holds the opening messages, chosen/rejected the rest.
    row = {"prompt": [{"role": "system", "content": "s"}], "chosen": chat("q", "c"), "rejected": chat("q", "r"),
           "raco_s_x": -1}
    pairs, _ = load_pairs(write_jsonl(tmp_path / "x.jsonl", [row]), tokenizer=tiny_chat_tokenizer())
    assert pairs == [Pair("<|system|>s\n<|user|>q\n<|assistant|>", "c", "r", (-1,))]


# ----------------------------------------------------------------------------- bad input, exact messages

SIGNED = {"prompt": "p", "response_a": "a", "response_b": "b", "raco_s_quality": 1}


@pytest.mark.parametrize("rows, message", [
    ([SIGNED, SIGNED, {**SIGNED, "raco_s_quality": 2}],
     "line 3: field 'raco_s_quality' must be +1, -1 or 0, got 2"),
    ([SIGNED, {**SIGNED, "raco_s_quality": True}], "line 2: field 'raco_s_quality' must be +1, -1 or 0, got True"),
    ([SIGNED, {k: v for k, v in SIGNED.items() if k != "response_b"}], "line 2: missing field 'response_b'"),
    ([{**SIGNED, "response_a": " "}], "line 1: field 'response_a' must hold a non-empty response, got ' '"),
    ([{**SIGNED, "response_b": None}],
     "line 1: field 'response_b' must be a string or a list of {role, content} messages, got None"),
    ([{k: v for k, v in SIGNED.items() if k != "prompt"}],
     "line 1: missing field 'prompt' (the responses are plain strings)"),
    ([moa_row(quality="C")], "line 1: field 'Quality' must name A, B or a tie "
                             "(A, Summary_A, 1 / B, Summary_B, 2 / tie, equal, 0), got 'C'"),
    ([moa_row(quality=None)], "line 1: field 'Quality' must name A, B or a tie "
                              "(A, Summary_A, 1 / B, Summary_B, 2 / tie, equal, 0), got None"),
    ([moa_row(verbosity=3)], "line 1: field 'Verbosity' must name A, B or a tie "
                             "(A, Summary_A, 1 / B, Summary_B, 2 / tie, equal, 0), got 3"),
    ([moa_row(a="")], "line 1: field 'Summary_A' must hold a non-empty response, got ''"),
    ([{**moa_row(), "Summary_B": chat("another post", "b")}],
     "line 1: fields 'Summary_A' and 'Summary_B' must share every message before the last"),
    ([{**moa_row(), "Summary_B": [{"role": "user", "content": "the post"}]}],
     "line 1: field 'Summary_B' must end with an assistant message, got role 'user'"),
    ([{"prompt": "p", "response_0": "x", "response_1": "y", "better_response_id": 2, "safer_response_id": 0}],
     "line 1: field 'better_response_id' must be 0 or 1, got 2"),
])
def test_bad_rows_name_file_line_field_and_expectation(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.raises(DataError) as error:
        load_pairs(path)
    assert str(error.value) == f"{path} {message}"


def test_a_file_that_is_not_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError) as error:
        load_pairs(str(path))
    # the reason in brackets is pyarrow's own wording, which changes between versions: check its frame only
    assert str(error.value).startswith(f"{path}: not a readable parquet file (") and "magic bytes" in str(error.value)
    assert "\n" not in str(error.value)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(SIGNED) + "\n\n" + '{"prompt": "p",\n')
    with pytest.raises(DataError) as error:
        load_pairs(str(path))
    assert str(error.value) == f"{path} line 3: not valid JSON (Expecting property name enclosed in double quotes " \
                               "at column 16)"


@pytest.mark.parametrize("name, content, message", [
    ("x.jsonl", b"\n\n", "no examples (empty data set)"),
    ("x.json", b"[]", "no examples (empty data set)"),
    ("x.json", b"{\"rows\": []}", "expected a list of objects, or an object with a 'train' or 'data' list"),
    ("x.jsonl", b"\xff\xfe", "line 1: not UTF-8 (byte b'\\xff' at column 1); save the file as UTF-8"),
    # a Latin-1 byte on the third line, reported where an editor shows it
    ("x.jsonl", b'{"a": 1}\n{"a": 2}\n{"a": "caf\xe9"}\n', "line 3: not UTF-8 (byte b'\\xe9' at column 11); save the "
                                                          "file as UTF-8"),
    ("x.jsonl", b"[1, 2]\n", "line 1: expected a JSON object, got list"),
    ("x.csv", b"a,b\n", "unsupported file type; expected .jsonl, .json, .parquet or a directory"),
    ("x.jsonl", json.dumps({"prompt": "p", "answer": "a"}).encode(),
     "columns ['prompt', 'answer'] match no format; expected signed (prompt, chosen/rejected or "
     "response_a/response_b, raco_s_<objective>...), pku (prompt, response_0, response_1, better_response_id, "
     "safer_response_id) or moa (Summary_A, Summary_B, Quality[, Verbosity, Faithfulness])"),
])
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_pairs(str(path))
    assert str(error.value) == f"{path}{'' if message.startswith('line') else ':'} {message}"


def test_bad_arguments(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [SIGNED])
    missing = str(tmp_path / "nope.jsonl")
    cases = [(dict(source=missing), f"{missing}: no such file or directory"),
             (dict(source="./not/here"), "./not/here: no such file or directory"),
             (dict(source=path, data_format="hh"), "unknown data_format 'hh'; expected auto, signed, pku, moa"),
             (dict(source=path, objectives=["length"]), f"{path}: unknown objective 'length'; available: quality"),
             (dict(source=path, objectives=["quality", "quality"]),
              f"{path}: objectives must be a non-empty list without repeats, got ['quality', 'quality']"),
             (dict(source=path, data_format="moa"), f"{path} line 1: missing field 'Summary_A'"),
             (dict(source=write_jsonl(tmp_path / "y.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}]),
                   data_format="signed"),
              f"{tmp_path / 'y.jsonl'}: no raco_s_<objective> columns for data_format 'signed' "
              "(columns: ['prompt', 'chosen', 'rejected'])")]
    for kwargs, message in cases:
        with pytest.raises(DataError) as error:
            load_pairs(**kwargs)
        assert str(error.value) == message


@pytest.mark.parametrize("module, name, message", [
    ("datasets", "folder", "folder: loading a directory or hub data set needs the datasets library "
                           "(pip install datasets)"),
    ("pyarrow.parquet", "x.parquet", "x.parquet: reading parquet needs pyarrow (pip install pyarrow)")])
def test_a_missing_library_says_what_to_install(tmp_path, monkeypatch, module, name, message):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DataError) as error:
        load_pairs(name)
    assert str(error.value) == message


# ----------------------------------------------------------------------------- datasets (a directory, as a hub id)

def test_a_directory_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "moa"
    folder.mkdir()
    rows = [moa_row(quality="Summary_B", verbosity=None, a="one two", b="one"), moa_row(quality="tie")]
    write_jsonl(folder / "train.jsonl", rows)
    assert load_pairs(str(folder)) == load_pairs(str(folder / "train.jsonl"))
    assert [p.signs for p in load_pairs(str(folder))[0]] == [(-1, -1), (0, 1)]
    write_jsonl(folder / "train.jsonl", rows + [moa_row(quality="maybe")])
    with pytest.raises(DataError) as error:
        load_pairs(str(folder))
    assert str(error.value) == f"{folder} train row 2: field 'Quality' must name A, B or a tie " \
                               "(A, Summary_A, 1 / B, Summary_B, 2 / tie, equal, 0), got 'maybe'"
    with pytest.raises(DataError) as error:
        load_pairs(str(folder), split="test")
    assert str(error.value).startswith(f"{folder}: datasets.load_dataset(split='test') failed (")


def test_a_utf8_byte_order_mark_is_dropped_and_each_pair_knows_its_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(SIGNED) + "\n\n" + json.dumps(SIGNED) + "\n").encode())
    pairs, names = load_pairs(str(path))
    assert pairs == load_pairs(write_jsonl(tmp_path / "plain.jsonl", [SIGNED, SIGNED]))[0]
    assert [p.where for p in pairs] == [f"{path} line 1", f"{path} line 3"]
