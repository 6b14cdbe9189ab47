"""Tests of the embedded world: hand-worked scorer values, label signs, the prompt split, the shipped artefacts."""
import fractions
import itertools
import json
import math
import os
import random

import pytest

import world
from experiments import world_build
from harness.metrics import front_gain_2d, front_hypervolume_2d, pareto_front, pearson
from tiny import ROOT

MODEL_DIR = os.path.join(ROOT, "models", "world-tiny")
DATA_DIR = os.path.join(ROOT, "data")

PROMPT = "facts: the cat is happy . the dog is slow . the owl is old . summary:"  # the dog's usual is "fast"


def close(a, b):
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


# --- prompts ------------------------------------------------------------------------------------------------------


def test_prompt_round_trip():
    facts = {"cat": "happy", "dog": "slow", "owl": "old"}
    assert world.facts_prompt(list(facts.items())) == PROMPT
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
    assert world.parse_response(text) is None
    s = world.score(PROMPT, text)
    assert s["well_formed"] == 0.0 and s["quality"] == s["conciseness"] == s["faithfulness"] == 0.0


def test_full_coverage():
    s = world.score(PROMPT, "the happy cat . the slow dog . the old owl .")
    assert tuple(s) == world.SCORES and tuple(world.score(PROMPT, "the")) == world.SCORES  # what eval.py reserves
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


# --- the conflict knob --------------------------------------------------------------------------------------------


def test_pair_kinds_by_hand():
    bare_one, bare_two = "the happy cat .", "the happy cat . the slow dog ."  # 3 and 6 words
    padded_one = "and then we see the happy cat ."  # one fact in 7 words
    assert world.pair_kind(PROMPT, bare_two, bare_one) == "conflict"  # more facts, more words
    assert world.pair_kind(PROMPT, bare_two, padded_one) == "agree"  # more facts in fewer words
    assert world.pair_kind(PROMPT, "also the happy cat .", bare_one) == "waste"  # the same fact, one word more
    assert world.pair_kind(PROMPT, "the old owl .", bare_one) is None  # a different fact in as many words: a tie
    assert world.pair_kind(PROMPT, "the fast dog .", bare_one) == "agree"  # a wrong fact: less quality, same words


def pools(prompts):
    """Candidate responses per prompt with every kind of pair among them: the bare k-fact summaries (conflicting
    with each other), the first fact padded to 7 words (agreeing with the 2-fact one) and with one filler word
    (waste beside the bare one)."""
    out = []
    for prompt in prompts:
        bare = world.front_responses(prompt)
        out.append(bare + ["and then we see " + bare[0], "also " + bare[0]])
    return out


def test_conflict_pairs_draw_each_kind_as_the_level_asks_and_label_it_by_its_scores():
    prompts = world.make_prompts(400, 3)
    candidates = pools(prompts)
    for level in (0.0, 0.3, 1.0):
        rows = world.conflict_pairs(prompts, candidates, level, label_temperature=0.0, seed=1)
        assert len(rows) == len(prompts)  # every prompt has every kind here
        share = sum(r["kind"] == "conflict" for r in rows) / len(rows)
        assert abs(share - level) < 4 * math.sqrt(max(level * (1 - level), 1e-9) / len(rows)) + 1e-9
        for r in rows:
            assert world.pair_kind(r["prompt"], r["response_a"], r["response_b"]) == r["kind"]
            quality, conciseness = r["raco_s_quality"], r["raco_s_conciseness"]
            if r["kind"] == "conflict":
                assert quality == -conciseness != 0
            elif r["kind"] == "agree":
                assert quality != 0 and conciseness in (0, quality)
            else:
                assert quality == 0 != conciseness
        if level == 0.0:  # without conflict, agree and waste pairs come about equally often
            assert abs(sum(r["kind"] == "agree" for r in rows) / len(rows) - 0.5) < 0.1


def test_raising_the_level_only_turns_pairs_into_conflict_pairs():
    prompts = world.make_prompts(200, 4)
    candidates = pools(prompts)
    low, high = (world.conflict_pairs(prompts, candidates, level, seed=2) for level in (0.25, 0.75))
    assert [r["prompt"] for r in low] == [r["prompt"] for r in high]
    for a, b in zip(low, high):
        assert b == a if a["kind"] == "conflict" or b["kind"] != "conflict" else a["kind"] in ("agree", "waste")
    assert sum(r["kind"] == "conflict" for r in high) > sum(r["kind"] == "conflict" for r in low)


def test_a_prompt_without_a_pair_of_the_kind_drawn_is_left_out():
    prompts = world.make_prompts(50, 5)
    only_bare = [world.front_responses(p) for p in prompts]  # conflict pairs only
    assert world.conflict_pairs(prompts, only_bare, 0.0) == []
    assert len(world.conflict_pairs(prompts, only_bare, 1.0)) == len(prompts)
    with pytest.raises(ValueError, match="level"):
        world.conflict_pairs(prompts, only_bare, 1.5)


# --- the shipped tokenizer and data (the shipped model's samples: tests/harness/test_models.py) -------------------


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


# --- the exact Pareto front ---------------------------------------------------------------------------------------

OBJECTIVE_SETS = [("quality", "conciseness"), ("quality", "faithfulness"), ("conciseness", "faithfulness"),
                  world.OBJECTIVES]
# A sentence's filler as (prefix, intensifier); the scorer sees filler only through the word count, so one form per
# count of extra words (0 to 5) stands for all of them ("also" and "very" both add one word).
ALL_FILLERS = [("", ""), ("", "very "), ("we see ", ""), ("we see ", "very "), ("and then we see ", ""),
               ("and then we see ", "very ")]


def reduced_responses(prompt, max_sentences, fillers=ALL_FILLERS):
    """Every response of 1..max_sentences sentences over a reduced alphabet, as strings, plus the empty one. The
    scorer asks of a stated fact only whether it is a prompt fact stated correctly (and which, for repeats), so the
    alphabet is each prompt fact, one contradicted fact and one absent animal, each with every filler word count.
    Order never changes a score, so multisets of sentences suffice."""
    truth = world.parse_prompt(prompt)
    (entity, attribute), absent = next(iter(truth.items())), next(e for e in world.ENTITIES if e not in truth)
    wrong = next(a for a in world.ATTRIBUTES if a != attribute)
    facts = list(truth.items()) + [(entity, wrong), (absent, world.USUAL[absent])]
    sentences = [f"{prefix}the {very}{a} {e} ." for e, a in facts for prefix, very in fillers]
    return [""] + [" ".join(chosen) for s in range(1, max_sentences + 1)
                   for chosen in itertools.combinations_with_replacement(sentences, s)]


def scores_of(prompt, responses, objectives):
    return {tuple(world.score(prompt, r)[k] for k in objectives) for r in responses}


def flat(vertices):
    return [x for v in vertices for x in v]


@pytest.mark.parametrize("prompt, max_sentences, fillers", [
    (PROMPT, 4, ALL_FILLERS),  # n = 3, with an unusual fact (the slow dog)
    # n = 4, two unusual facts; filler of 0 or 1 word only, as all six forms would make 660k responses of <= 5
    ("facts: the fox is red . the cat is tall . the elk is young . the bee is small . summary:", 5, ALL_FILLERS[:2]),
])
def test_front_responses_make_the_front_of_every_response_up_to_one_sentence_past_full_coverage(
        prompt, max_sentences, fillers):
    # Why n + 1 sentences bound the search: a response of s > n sentences spends s - n of them on repeats or wrong
    # facts, >= 3 words each, and (front_responses' docstring) the bare response with its quality has fewer words
    # and faithfulness 1. n + 1 sentences already hold every kind of waste next to full coverage.
    achievable = {tuple(s[k] for k in world.OBJECTIVES) for s in
                  (world.score(prompt, r) for r in reduced_responses(prompt, max_sentences, fillers))}
    for objectives in OBJECTIVE_SETS:
        project = [world.OBJECTIVES.index(k) for k in objectives]
        brute = set(pareto_front(list({tuple(s[i] for i in project) for s in achievable})))
        assert brute == set(pareto_front(list(scores_of(prompt, world.front_responses(prompt), objectives))))
        # mixtures: every weighting's best response is as good as the best vertex of the exact front, and vice versa
        front = world.exact_front(objectives, [prompt])
        for w in itertools.product(*[[0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]] * len(objectives)):
            best = max(sum(a * b for a, b in zip(w, s)) for s in brute)
            assert math.isclose(best, max(sum(a * b for a, b in zip(w, v)) for v in front), abs_tol=1e-12)
        assert set(front) <= brute  # the vertices are scores of real responses


def test_the_reduced_alphabet_reaches_exactly_what_the_whole_grammar_reaches():
    # Unreduced on a tiny case: every sentence the grammar allows (any prefix, intensifier, attribute, animal), and
    # every pair of bare sentences; against the reduced alphabet within the same bounds.
    everything = [f"{' '.join(p) + ' ' if p else ''}the {v}{a} {e} ." for p in ((),) + world.PREFIXES
                  for v in ("", "very ") for a in world.ATTRIBUTES for e in world.ENTITIES]
    bare = [f"the {a} {e} ." for a in world.ATTRIBUTES for e in world.ENTITIES]
    everything += [x + " " + y for x in bare for y in bare]
    reduced = [r for r in reduced_responses(PROMPT, 2) if r.count(".") == 1 or len(r.split()) == 8]
    assert len(everything) == 1152 + 144 ** 2
    assert scores_of(PROMPT, everything, world.OBJECTIVES) == scores_of(PROMPT, reduced, world.OBJECTIVES)


def test_front_of_a_three_fact_prompt_by_hand():
    # k facts of 3, bare: quality k / 3, conciseness 1 / (1 + 3k / 9), faithfulness 1
    pure = [world.score(PROMPT, r) for r in world.front_responses(PROMPT)]
    assert flat((s["quality"], s["conciseness"], s["faithfulness"]) for s in pure) == pytest.approx(
        flat([(1 / 3, 3 / 4, 1), (2 / 3, 3 / 5, 1), (1, 1 / 2, 1)]))
    # with mixtures the 2-fact response is not on the front: half 1 fact, half 3 facts gives (2/3, 5/8) > (2/3, 3/5)
    front = world.exact_front(prompts=[PROMPT])
    assert flat(front) == pytest.approx([1 / 3, 3 / 4, 1, 1 / 2])
    assert front_gain_2d((2 / 3, 3 / 5), front) > 0.01


def test_the_front_depends_on_a_prompt_only_through_its_number_of_facts():
    usual = "facts: the cat is happy . the dog is fast . the owl is old . summary:"
    unusual = "facts: the elk is red . the rat is blue . the ant is slow . summary:"
    assert world.exact_front(world.OBJECTIVES, [usual]) == world.exact_front(world.OBJECTIVES, [unusual])
    by_count = {}
    for p in world.eval_prompts(100) + world.make_prompts(100, seed=0):
        by_count.setdefault(len(world.parse_prompt(p)), set()).add(tuple(world.exact_front(world.OBJECTIVES, [p])))
    assert sorted(by_count) == [3, 4, 5] and all(len(fronts) == 1 for fronts in by_count.values())


def test_expected_front_and_its_hypervolume_by_hand():
    # Each prompt's front is one segment, from 1 fact (1/n, 3/4) to n facts (1, 3/(3+n)); the average over n = 3, 4,
    # 5 starts at the mean of the 1-fact points and takes the segments (each / 3) in order of slope:
    # n = 3: (2/3, -1/4), slope -3/8; n = 4: (3/4, -9/28), slope -3/7; n = 5: (4/5, -3/8), slope -15/32.
    F = fractions.Fraction
    vertices = [(F(47, 180), F(3, 4))]
    for dq, dc in ((F(2, 3), F(-1, 4)), (F(3, 4), F(-9, 28)), (F(4, 5), F(-3, 8))):
        vertices.append((vertices[-1][0] + dq / 3, vertices[-1][1] + dc / 3))
    assert vertices[-1] == (1, (F(1, 2) + F(3, 7) + F(3, 8)) / 3)  # full coverage on every prompt
    front = world.exact_front()
    assert flat(front) == pytest.approx([float(x) for x in flat(vertices)], abs=1e-15)
    # area: the rectangle left of the first vertex, then three trapezoids
    area = vertices[0][0] * vertices[0][1] + sum((b[0] - a[0]) * (a[1] + b[1]) / 2
                                                 for a, b in zip(vertices, vertices[1:]))
    assert area == F(3865, 6048)  # 0.6391, the hypervolume docs/world.md states
    assert front_hypervolume_2d(front, (0, 0)) == pytest.approx(float(area), abs=1e-15)
    # faithfulness is 1 all along: the triple front is the pair front at faithfulness 1, and faithfulness alone
    # conflicts with neither (state every fact; state one)
    assert world.exact_front(world.OBJECTIVES) == [v + (1.0,) for v in front]
    assert world.exact_front(("quality", "faithfulness")) == [(1.0, 1.0)]
    assert world.exact_front(("conciseness", "faithfulness")) == [(0.75, 1.0)]


def test_front_over_held_out_prompts_weighs_each_number_of_facts_by_its_share():
    prompts = world.eval_prompts(256)
    counts = {n: sum(len(world.parse_prompt(p)) == n for p in prompts) / len(prompts) for n in (3, 4, 5)}
    expected = [(sum(w / n for n, w in counts.items()), 0.75)]
    for n in (3, 4, 5):  # the segments in order of slope, as in the test above
        expected.append((expected[-1][0] + counts[n] * (1 - 1 / n),
                         expected[-1][1] + counts[n] * (3 / (3 + n) - 0.75)))
    assert flat(world.exact_front(prompts=prompts)) == pytest.approx(flat(expected), abs=1e-12)


def test_no_achievable_point_lies_beyond_the_front():
    prompts, rng = world.eval_prompts(256), random.Random(0)
    written = [world.score(p, world_build.write_response(p, rng)) for p in prompts]
    for p, s in zip(prompts, written):  # each response against its own prompt's front
        assert front_gain_2d((s["quality"], s["conciseness"]), world.exact_front(prompts=[p])) >= -1e-12
    mean = (sum(s["quality"] for s in written) / len(written), sum(s["conciseness"] for s in written) / len(written))
    assert front_gain_2d(mean, world.exact_front(prompts=prompts)) > 0.05  # the writer is far from optimal
    # the shipped reference model's samples on held-out prompts
    rows = read_jsonl("world_eval.jsonl")
    sampled = [world.score(r["prompt"], r[side]) for r in rows for side in ("response_a", "response_b")]
    mean = (sum(s["quality"] for s in sampled) / len(sampled), sum(s["conciseness"] for s in sampled) / len(sampled))
    assert front_gain_2d(mean, world.exact_front(prompts=[r["prompt"] for r in rows])) > 0
