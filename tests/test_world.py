"""Tests of the embedded world: hand-worked scorer values, label signs, the prompt split, the shipped artefacts."""
import json
import math
import os
import random

import pytest
import torch

import world
from metrics import pearson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models", "world-tiny")
DATA_DIR = os.path.join(ROOT, "data")

PROMPT = "facts: the cat is happy . the dog is slow . the owl is old . summary:"  # the dog's usual is "fast"


def close(a, b):
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


# --- prompts ------------------------------------------------------------------------------------------------------


def test_prompt_round_trip():
    facts = {"cat": "happy", "dog": "slow", "owl": "old"}
    assert world.render_prompt(list(facts.items())) == PROMPT
    assert world.parse_prompt(PROMPT) == facts


def test_train_and_eval_prompts_are_disjoint_and_seeded():
    def fact_set(p):
        return frozenset(world.parse_prompt(p).items())

    train = world.make_prompts(3000, seed=0) + world.make_prompts(3000, seed=1)
    held_out = world.eval_prompts(300, seed=0) + world.eval_prompts(300)
    assert not {fact_set(p) for p in train} & {fact_set(p) for p in held_out}
    assert world.make_prompts(50, seed=3) == world.make_prompts(50, seed=3)
    assert world.make_prompts(50, seed=3) != world.make_prompts(50, seed=4)
    for p in train[:500]:
        assert 3 <= len(world.parse_prompt(p)) <= 5


# --- the grammar and the scorers ---------------------------------------------------------------------------------


def test_parse_response_reads_facts_through_filler():
    text = "the happy cat . also the very slow dog . and then we see the old owl ."
    assert world.parse_response(text) == [("cat", "happy"), ("dog", "slow"), ("owl", "old")]


@pytest.mark.parametrize("text", [
    "",  # empty: not a summary
    "the happy cat",  # no closing full stop (e.g. cut off by max_new_tokens)
    "the happy cat . the slow",  # stops mid-sentence
    "the cat is happy .",  # the prompt's long form is not the summary grammar
    "the happy zebra .",  # unknown animal
    "the happy cat cat .",
    "also also the happy cat .",  # one prefix at most
    "the very very happy cat .",
    "very the happy cat .",
    ". the happy cat .",  # empty sentence
])
def test_ill_formed_responses(text):
    assert world.parse_response(text) is None and not world.is_well_formed(text)
    s = world.score(PROMPT, text)
    assert s["well_formed"] == 0.0 and s["quality"] == s["conciseness"] == s["faithfulness"] == 0.0


def test_full_coverage():
    s = world.score(PROMPT, "the happy cat . the slow dog . the old owl .")
    assert s["well_formed"] == 1.0 and s["words"] == 9
    assert close(s["quality"], 1.0) and close(s["faithfulness"], 1.0)
    assert close(s["conciseness"], 1 / (1 + 9 / world.CONCISE_HALF_WORDS))  # = 0.5 at 9 words


def test_partial_coverage():
    s = world.score(PROMPT, "the old owl .")
    assert close(s["quality"], 1 / 3) and close(s["faithfulness"], 1.0) and s["words"] == 3
    assert close(s["conciseness"], 0.75)  # 1 / (1 + 3/9)


def test_the_usual_attribute_where_the_prompt_says_otherwise_is_a_contradiction():
    s = world.score(PROMPT, "the happy cat . the fast dog .")  # dogs are usually fast, this one is slow
    assert close(s["quality"], 1 / 3) and close(s["faithfulness"], 1 / 2)


def test_an_animal_not_in_the_prompt_is_unfaithful_but_costs_no_coverage():
    s = world.score(PROMPT, "the happy cat . the red fox . the slow dog .")
    assert close(s["quality"], 2 / 3) and close(s["faithfulness"], 2 / 3)


def test_filler_costs_conciseness_only():
    bare = world.score(PROMPT, "the happy cat . the old owl .")
    padded = world.score(PROMPT, "also the very happy cat . and then we see the old owl .")
    assert padded["words"] == bare["words"] + 6
    assert bare["quality"] == padded["quality"] and bare["faithfulness"] == padded["faithfulness"]
    assert padded["conciseness"] < bare["conciseness"]


def test_a_repeated_fact_counts_once():
    s = world.score(PROMPT, "the happy cat . the happy cat .")
    assert close(s["quality"], 1 / 3) and close(s["faithfulness"], 1.0) and s["words"] == 6


def test_more_coverage_costs_conciseness():
    """The conflict in its simplest form: each correct fact added raises quality and lowers conciseness."""
    responses = ["the happy cat .", "the happy cat . the slow dog .", "the happy cat . the slow dog . the old owl ."]
    scores = [world.score(PROMPT, r) for r in responses]
    assert [s["quality"] for s in scores] == sorted(s["quality"] for s in scores)
    assert all(a["conciseness"] > b["conciseness"] for a, b in zip(scores, scores[1:]))


# --- labels ---------------------------------------------------------------------------------------------------------


def test_label_signs_in_the_noiseless_limit():
    better = world.score(PROMPT, "the happy cat . the slow dog .")  # more quality, less conciseness
    worse = world.score(PROMPT, "the happy cat .")
    rng = random.Random(0)
    labels = world.preference_labels(better, worse, 0.0, rng)
    assert labels == {"quality": 1, "conciseness": -1, "faithfulness": 0}  # both fully faithful: a tie
    assert world.preference_labels(worse, better, 0.0, rng) == {"quality": -1, "conciseness": 1, "faithfulness": 0}
    # a tiny temperature behaves like the noiseless limit
    for _ in range(100):
        assert world.preference_labels(better, worse, 1e-4, rng) == labels


def test_labels_follow_bradley_terry():
    a, b = {k: 0.6 for k in world.OBJECTIVES}, {k: 0.5 for k in world.OBJECTIVES}
    rng, n = random.Random(0), 4000
    wins = sum(world.preference_labels(a, b, 0.1, rng)["quality"] == 1 for _ in range(n))
    expected = 1 / (1 + math.exp(-1.0))  # sigmoid(0.1 / 0.1) = 0.731
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


# --- the shipped tokenizer and data (the shipped model's samples: test_policy.py) ----------------------------------


def test_tokenizer_boundary_is_exact():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    response = "also the very happy cat . the slow dog ."
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in response_ids
    assert prompt_ids + response_ids == tokenizer(PROMPT + " " + response)["input_ids"]
    assert tokenizer.unk_token_id not in prompt_ids + response_ids
    assert tokenizer.decode(response_ids) == response
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}) == 4


def read_jsonl(name):
    with open(os.path.join(DATA_DIR, name)) as f:
        return [json.loads(line) for line in f]


def test_shipped_pairs_are_well_formed_rows():
    train, held_out = read_jsonl("world_train.jsonl"), read_jsonl("world_eval.jsonl")
    assert len(train) >= 2000 and len(held_out) >= 200
    keys = {"prompt", "response_a", "response_b"} | {f"raco_s_{k}" for k in world.OBJECTIVES}
    for row in train + held_out:
        assert set(row) == keys
        assert row["response_a"] and row["response_b"]  # loaders reject empty completions
        assert all(row[f"raco_s_{k}"] in (-1, 0, 1) for k in world.OBJECTIVES)
    assert not any(world.is_eval_prompt(r["prompt"]) for r in train)
    assert all(world.is_eval_prompt(r["prompt"]) for r in held_out)


def test_shipped_labels_are_ties_exactly_on_equal_scores_and_mostly_follow_the_scores():
    rows = read_jsonl("world_train.jsonl")
    agree = decided = 0
    for row in rows:
        a, b = world.score(row["prompt"], row["response_a"]), world.score(row["prompt"], row["response_b"])
        for k in world.OBJECTIVES:
            diff, label = a[k] - b[k], row[f"raco_s_{k}"]
            assert (label == 0) == (abs(diff) < 1e-9)
            if abs(diff) >= 0.2:  # sigmoid(0.2 / 0.05) = 0.98 at the default label temperature
                decided += 1
                agree += label == (1 if diff > 0 else -1)
    assert decided > 1000 and agree / decided > 0.95


def test_shipped_samples_show_the_conflict():
    rows = read_jsonl("world_train.jsonl")
    scores = [world.score(r["prompt"], r[side]) for r in rows for side in ("response_a", "response_b")]
    quality, conciseness = [s["quality"] for s in scores], [s["conciseness"] for s in scores]
    assert pearson(quality, conciseness) < -0.2


# --- the build ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_build_is_deterministic(tmp_path):
    def tiny(out):
        world.build(out_model=str(out / "model"), out_data=str(out / "data"), steps=5, batch_size=8,
                    train_pairs=6, eval_pairs=4, verbose=False)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        files = {name: (out / "data" / name).read_text() for name in ("world_train.jsonl", "world_eval.jsonl")}
        return model.state_dict(), AutoTokenizer.from_pretrained(out / "model").get_vocab(), files

    first, second = tiny(tmp_path / "a"), tiny(tmp_path / "b")
    assert first[0].keys() == second[0].keys()
    assert all(torch.equal(first[0][k], second[0][k]) for k in first[0])
    assert first[1] == second[1] and first[2] == second[2]
    assert 0 < len(first[2]["world_train.jsonl"].splitlines()) <= 6  # pairs with an empty sample are dropped
