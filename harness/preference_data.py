"""Multi-objective preference pairs from real data files (the setting: docs/method.md; the formats: docs/real-data.md).

RACO needs, for every example, ONE pair (x, y_a, y_b) that all m objectives share, and one label per objective,
s_i in {+1, -1, 0}: +1 = y_a preferred, -1 = y_b preferred, 0 = tie. Public data sets spell this in different
ways; this file turns three of them into the same list of `Pair`s:

  signed  prompt, response_a/response_b (or chosen/rejected), raco_s_<objective> ...
          (what experiments/world_build.py writes)
          -> the objectives are the raco_s_ columns, in column order.
  pku     PKU-SafeRLHF: prompt, response_0, response_1, better_response_id, safer_response_id
          -> helpful, harmless.
  moa     Reddit TL;DR summaries as in MOA: Summary_A, Summary_B, Quality, Verbosity[, Faithfulness]
          -> quality, conciseness[, faithfulness].

A mistake in the input raises DataError with ONE line naming the file, the line or row, the field and what was
expected, so a 100k-row file fails with something one can fix; train.py prints it and exits 2.
"""
import json
import os
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from harness.errors import DataError, first_line

FORMATS = ("signed", "pku", "moa")
SIGN_PREFIX = "raco_s_"
PKU_COLUMNS = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id")
MOA_COLUMNS = ("Summary_A", "Summary_B", "Quality")
EXPECTED = ("signed (prompt, chosen/rejected or response_a/response_b, raco_s_<objective>...), "
            "pku (" + ", ".join(PKU_COLUMNS) + ") or moa (Summary_A, Summary_B, Quality[, Verbosity, Faithfulness])")

# MOA-style labels, compared after lower-casing and turning spaces and '-' into '_' ("Summary A" -> "summary_a").
A_LABELS = {"a", "summary_a", "response_a", "1"}
B_LABELS = {"b", "summary_b", "response_b", "2"}
TIE_LABELS = {"tie", "equal", "same", "none", "neither", "both", "0"}


@dataclass(frozen=True)
class Pair:
    """One example for all objectives: signs[i] is objective i's label (+1: a preferred, -1: b, 0: tie)."""
    prompt: str        # rendered: chat template (or plain "role: content" lines) already applied
    response_a: str
    response_b: str
    signs: tuple
    where: str = dataclass_field(default="", compare=False)  # '<file> line <n>' or '<source> row <i>', for messages


# ----------------------------------------------------------------------------- prompts and responses

def render_prompt(messages_or_str, tokenizer=None):
    """The prompt text the model is conditioned on.

    A string is returned as it is. A list of {"role", "content"} messages goes through the tokenizer's chat
    template with the generation prompt appended (the response follows it directly); without a tokenizer or
    without a chat template (a base model), each message becomes a line "role: content" and the prompt ends with
    "assistant:" on a line of its own, e.g. "user: Summarise this.\\nassistant:\\n". The trailing newline rather
    than a space: BPE tokenizers glue a space to the next word, so a trailing space would be an unusual token.
    """
    if isinstance(messages_or_str, str):
        return messages_or_str
    if not messages_or_str:
        return ""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages_or_str, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages_or_str) + "assistant:\n"


def _is_messages(value):
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _kind(value, where, field):
    if isinstance(value, str):
        _check_unicode(value, where, field)
        return "text"
    if _is_messages(value) and value:
        for i, message in enumerate(value):
            _check_unicode(message["content"], where, f"{field}[{i}].content")
        return "messages"
    raise DataError(f"{where}: field '{field}' must be a string or a list of {{role, content}} messages, "
                    f"got {_show(value)}")


def _check_unicode(text, where, field):
    """Text that UTF-8 can encode: JSON's \\ud800 escapes decode to a lone surrogate, which no tokenizer or file
    writer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(f"{where}: field '{field}' holds {text[error.start]!r} at character {error.start}, a lone "
                        "surrogate that is not text (expected valid Unicode)") from None


def _prompt_and_responses(row, where, prompt_field, field_a, field_b, tokenizer):
    """(rendered prompt, response a, response b) from plain strings or from two chat transcripts.

    Transcripts (lists of messages) must end with an assistant message, which is the response, and share every
    message before it, which is the prompt (placed after the prompt column's messages, if that is a list too).
    """
    a, b = _field(row, field_a, where), _field(row, field_b, where)
    prompt = row.get(prompt_field) if prompt_field else None
    kind_a, kind_b = _kind(a, where, field_a), _kind(b, where, field_b)
    if kind_a != kind_b:
        raise DataError(f"{where}: fields '{field_a}' and '{field_b}' must both be strings or both message lists")
    if kind_a == "messages":
        for value, field in ((a, field_a), (b, field_b)):
            if value[-1]["role"] != "assistant":
                raise DataError(f"{where}: field '{field}' must end with an assistant message, "
                                f"got role {value[-1]['role']!r}")
        if a[:-1] != b[:-1]:
            raise DataError(f"{where}: fields '{field_a}' and '{field_b}' must share every message before the last")
        shared, a, b = a[:-1], a[-1]["content"], b[-1]["content"]
        if prompt is None:
            prompt = shared
        elif _kind(prompt, where, prompt_field) == "messages":
            prompt = prompt + shared
        elif shared:
            raise DataError(f"{where}: field '{prompt_field}' is a string but '{field_a}' and '{field_b}' hold "
                            "prompt messages too; give the prompt one way")
    elif prompt is None:
        raise DataError(f"{where}: missing field '{prompt_field or 'prompt'}' (the responses are plain strings)")
    else:
        _kind(prompt, where, prompt_field)
    for value, field in ((a, field_a), (b, field_b)):
        if not value.strip():
            raise DataError(f"{where}: field '{field}' must hold a non-empty response, got {value!r}")
    return render_prompt(prompt, tokenizer), a, b


# ----------------------------------------------------------------------------- labels

def _show(value, width=40):
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _field(row, name, where):
    if name not in row:
        raise DataError(f"{where}: missing field '{name}'")
    return row[name]


def _signed_label(row, name, where):
    """+1, -1 or 0, given as int, float equal to one of those, or string ("1", "+1", "-1", "0")."""
    value = _field(row, name, where)
    if isinstance(value, str):
        sign = {"1": 1, "+1": 1, "-1": -1, "0": 0}.get(value.strip())
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value in (1, -1, 0):
        sign = int(value)
    else:
        sign = None
    if sign is None:
        raise DataError(f"{where}: field '{name}' must be +1, -1 or 0, got {_show(value)}")
    return sign


def _pku_label(row, name, where):
    """PKU-SafeRLHF's *_response_id names the better response: 0 -> response_0 = y_a (+1), 1 -> y_b (-1)."""
    value = _field(row, name, where)
    if isinstance(value, str):
        value = value.strip()
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise DataError(f"{where}: field '{name}' must be 0 or 1, got {_show(value)}")
    return 1 if int(value) == 0 else -1


def _ab_label(value):
    """+1 / -1 / 0 for a label naming A, B or a tie, None if it is not one (see A_LABELS, B_LABELS, TIE_LABELS)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {1: "1", 2: "2", 0: "0"}.get(value)  # 1.0 == 1, so floats read from a parquet column work too
    if not isinstance(value, str):
        return None
    value = value.strip().lower().replace(" ", "_").replace("-", "_")
    return 1 if value in A_LABELS else -1 if value in B_LABELS else 0 if value in TIE_LABELS else None


def _moa_label(row, name, where):
    value = _field(row, name, where)
    sign = _ab_label(value)
    if sign is None:
        raise DataError(f"{where}: field '{name}' must name A, B or a tie (A, Summary_A, 1 / B, Summary_B, 2 / "
                        f"tie, equal, 0), got {_show(value)}")
    return sign


def _shorter(text_a, text_b):
    """+1 if a has fewer words, -1 if b has, 0 if they are as long."""
    words_a, words_b = len(text_a.split()), len(text_b.split())
    return (words_a < words_b) - (words_a > words_b)


# ----------------------------------------------------------------------------- the three formats

def available_objectives(data_format, columns):
    """The objectives a data set offers, in the order its signs come."""
    if data_format == "signed":
        return [c[len(SIGN_PREFIX):] for c in columns if c.startswith(SIGN_PREFIX)]
    if data_format == "pku":
        return ["helpful", "harmless"]
    return ["quality", "conciseness"] + (["faithfulness"] if "Faithfulness" in columns else [])


def _signed_pair(row, where, columns, objectives, tokenizer):
    # response_a/response_b name the columns what they are; chosen/rejected (TRL's names) are read as a and b,
    # and the signs still decide, per objective, which one is preferred.
    field_a, field_b = ("chosen", "rejected") if "chosen" in columns and "response_a" not in columns \
        else ("response_a", "response_b")
    prompt, a, b = _prompt_and_responses(row, where, "prompt", field_a, field_b, tokenizer)
    return Pair(prompt, a, b, tuple(_signed_label(row, SIGN_PREFIX + name, where) for name in objectives), where)


def _pku_pair(row, where, columns, objectives, tokenizer):
    prompt, a, b = _prompt_and_responses(row, where, "prompt", "response_0", "response_1", tokenizer)
    fields = {"helpful": "better_response_id", "harmless": "safer_response_id"}
    return Pair(prompt, a, b, tuple(_pku_label(row, fields[name], where) for name in objectives), where)


def _moa_pair(row, where, columns, objectives, tokenizer):
    prompt_field = "prompt" if "prompt" in columns else "post" if "post" in columns else None
    prompt, a, b = _prompt_and_responses(row, where, prompt_field, "Summary_A", "Summary_B", tokenizer)
    signs = []
    for name in objectives:
        if name == "conciseness":
            # Careful: the Verbosity label names the MORE CONCISE summary, the one preferred for conciseness, so
            # "A" is +1 here, not "A is more verbose". With no label, the shorter summary (in words) is preferred.
            label = row.get("Verbosity")
            missing = label is None or (isinstance(label, str) and not label.strip())
            signs.append(_shorter(a, b) if missing else _moa_label(row, "Verbosity", where))
        else:
            signs.append(_moa_label(row, name.capitalize(), where))
    return Pair(prompt, a, b, tuple(signs), where)


PAIR_READERS = {"signed": _signed_pair, "pku": _pku_pair, "moa": _moa_pair}


def detect_format(columns):
    """The format the columns fit (explicit raco_s_ signs win over the others), or None."""
    names = set(columns)
    if available_objectives("signed", columns) and ({"chosen", "rejected"} <= names
                                                    or {"response_a", "response_b"} <= names):
        return "signed"
    if set(PKU_COLUMNS) <= names:
        return "pku"
    if set(MOA_COLUMNS) <= names:
        return "moa"
    return None


# ----------------------------------------------------------------------------- sources

def _read_text(path):
    """The file's text; a UTF-8 byte-order mark (Windows editors write one) is dropped, and bytes that are not UTF-8
    are reported by line, as an editor shows them."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({first_line(e)})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line, column = raw[:e.start].count(b"\n") + 1, e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(f"{path} line {line}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at column {column}); "
                        "save the file as UTF-8") from None


def _read_jsonl(path, limit):
    rows = []
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028 and friends.
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        if limit is not None and len(rows) == limit:
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path} line {number}", row))
    return rows, list(rows[0][1]) if rows else []


def _read_json(path, split, limit):
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
        data = next((data[key] for key in (split, "data") if isinstance(data.get(key), list)), data)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of objects, or an object with a '{split}' or 'data' list")
    rows = []
    for index, row in enumerate(data[:limit]):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {index}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path} row {index}", row))
    return rows, list(rows[0][1]) if rows else []


def _read_parquet(path, limit):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, its IO errors are OSErrors
        raise DataError(f"{path}: not a readable parquet file ({first_line(e)})") from None
    table = table if limit is None else table.slice(0, limit)
    return [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist())], table.column_names


def _read_datasets(source, split, limit):
    """A local directory or hub id, through datasets.load_dataset exactly as a hub data set would be loaded."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: loading a directory or hub data set needs the datasets library "
                        "(pip install datasets)") from None
    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as e:  # any failure to load (no such data set, no split, offline, ...) becomes one line
        raise DataError(f"{source}: datasets.load_dataset(split={split!r}) failed "
                        f"({type(e).__name__}: {first_line(e)})") from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [(f"{source} {split} row {i}", row) for i, row in enumerate(dataset)], list(dataset.column_names)


def _read_rows(source, split, limit):
    """(label, [(where, row dict)], column names). label names the data in messages ('<file>', or '<id> <split>'
    for datasets); where is '<label> line <n>' (jsonl, 1-based as editors count lines) or '<label> row <i>'
    (json, parquet, datasets: 0-based, as data[i] indexes it). Columns: the first row's keys for JSON."""
    looks_local = os.path.exists(source) or source.endswith((".jsonl", ".json", ".parquet")) \
        or source.startswith(("/", "./", "../"))
    if looks_local and not os.path.exists(source):
        raise DataError(f"{source}: no such file or directory")
    if os.path.exists(source) and not (os.path.isfile(source) or os.path.isdir(source)):  # a FIFO, /dev/zero: unread
        raise DataError(f"{source}: not a regular file or directory")
    if os.path.isdir(source) or not looks_local:
        return (f"{source} {split}", *_read_datasets(source, split, limit))
    if source.endswith(".jsonl"):
        return (source, *_read_jsonl(source, limit))
    if source.endswith(".json"):
        return (source, *_read_json(source, split, limit))
    if source.endswith(".parquet"):
        return (source, *_read_parquet(source, limit))
    raise DataError(f"{source}: unsupported file type; expected .jsonl, .json, .parquet or a directory")


def load_pairs(source, data_format="auto", objectives=None, tokenizer=None, split="train", limit=None):
    """Read preference pairs: returns (pairs: list[Pair], objective_names: list[str]), signs in that order.

    source: a .jsonl / .json / .parquet file, or a directory or hub id (read by datasets.load_dataset(source,
    split=split)). data_format: "auto" (from the columns), "signed", "pku" or "moa" (see the module docstring).
    objectives: optional subset of the data's objectives, in the order wanted (["conciseness", "quality"] or
    "conciseness,quality").
    tokenizer: renders prompts given as message lists with its chat template (see render_prompt).
    limit: read at most this many examples.

    MOA labels (Quality, Verbosity, Faithfulness), case-insensitive, spaces and '-' read as '_':
      A:   "A", "Summary_A", "response_a", 1 (or "1")
      B:   "B", "Summary_B", "response_b", 2 (or "2")
      tie: "tie", "equal", "same", "none", "neither", "both", 0 (or "0")
    Verbosity names the MORE CONCISE summary (preferred for `conciseness`); a missing, null or empty Verbosity
    prefers the summary with fewer words (a tie if they are as long). Every other bad value raises DataError.
    """
    if data_format != "auto" and data_format not in FORMATS:
        raise DataError(f"unknown data_format {data_format!r}; expected auto, " + ", ".join(FORMATS))
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    if isinstance(objectives, str):  # "quality,conciseness" as a command line gives it
        objectives = objectives.split(",")
    source = os.fspath(source)
    label, rows, columns = _read_rows(source, split, limit)
    if not rows:
        raise DataError(f"{label}: no examples (empty data set)")
    if data_format == "auto":
        data_format = detect_format(columns)
        if data_format is None:
            raise DataError(f"{label}: columns {columns} match no format; expected {EXPECTED}")
    available = available_objectives(data_format, columns)
    if not available:
        raise DataError(f"{label}: no {SIGN_PREFIX}<objective> columns for data_format 'signed' (columns: {columns})")
    for name in objectives or []:
        if name not in available:
            raise DataError(f"{label}: unknown objective {name!r}; available: " + ", ".join(available))
    if objectives is not None and (not objectives or len(set(objectives)) != len(objectives)):
        raise DataError(f"{label}: objectives must be a non-empty list without repeats, got {list(objectives)}")
    names = list(objectives) if objectives is not None else available
    return [PAIR_READERS[data_format](row, where, columns, names, tokenizer) for where, row in rows], names
