"""
The embedded multi-objective world: a tiny summarisation task whose objectives are scored exactly by code, and
its exact Pareto front (the best trade-off any policy can reach).

It mirrors the paper's Reddit TL;DR setting (arXiv 2602.02495, its summarisation experiments): summary quality vs
conciseness (m = 2), plus faithfulness (m = 3). Here the "reward models" are exact rules, so every metric can be
checked by hand.

The task. A prompt lists 3-5 facts about distinct animals and asks for a summary:
    facts: the cat is happy . the dog is slow . the owl is old . summary:
A response restates some facts in the short form "the ATTRIBUTE ANIMAL .", optionally with filler that adds words
but no information ("also", "we see", "and then we see", "very"):
    the happy cat . also the very old owl .
Every animal has a usual attribute (the cat is usually happy, the dog usually fast, ...) and a prompt states it 3
times in 4. Stating the usual attribute where the prompt says otherwise ("the fast dog" for the prompt above) is
the world's hallucination, a summariser trusting its prior over the post; naming an animal the prompt never
mentions is the other kind. (Why a prior at all: with attributes drawn uniformly, copying the right attribute
needs an induction circuit that a 2-layer model forms only after thousands of steps, and not reliably so; world
knowledge is learnt in a few hundred, and the unusual facts still reward reading the prompt.)

The objectives (each in [0, 1], pure functions of the prompt and response strings; see `score`):
    quality      = fraction of the prompt's facts the response states correctly      (coverage)
    conciseness  = 1 / (1 + words / CONCISE_HALF_WORDS)                             (fewer words is better)
    faithfulness = fraction of the response's stated facts that agree with the prompt
Quality and conciseness conflict because each fact costs words (on the reference model's samples their Pearson
correlation is about -0.44, and 4 in 5 pairs where both are decided get opposite labels). Faithfulness agrees with
each of them on average (a wrong fact costs words and is no coverage) but opposes quality on ~2 in 5 decided pairs:
a complete summary has to include the unusual facts, which are the ones a model gets wrong.
An ill-formed response (the empty one included) is not a summary and scores 0 on all three: otherwise "say
nothing" would be maximally concise and vacuously faithful, and a conciseness-heavy weighting would teach the model
to emit EOS at once. `well_formed` is reported as its own metric so that any collapse towards junk stays visible.
`exact_front` gives the best trade-off any policy can reach: each prompt's best responses are known, so it is exact.

The reference model and the preference pairs are built from this task by experiments/world_build.py; a policy is
sampled and scored on it by harness/sampling.score_on_world.
"""
import math
import os
import random
import zlib

OBJECTIVES = ("quality", "conciseness", "faithfulness")
SCORES = OBJECTIVES + ("well_formed", "words")  # what score() returns for a response

ENTITIES = ("cat", "dog", "owl", "fox", "bee", "cow", "pig", "hen", "ant", "rat", "bat", "elk")
ATTRIBUTES = ("happy", "fast", "old", "red", "small", "big", "slow", "young", "brown", "green", "blue", "tall")
USUAL = dict(zip(ENTITIES, ATTRIBUTES))  # world knowledge: the cat is usually happy, the dog usually fast, ...
P_USUAL = 0.75  # a prompt gives an animal its usual attribute with this probability, another one otherwise
FACT_COUNTS = (3, 4, 5)  # a prompt states this many facts, each count equally likely
PREFIXES = (("also",), ("we", "see"), ("and", "then", "we", "see"))  # filler before a sentence
INTENSIFIER = "very"  # filler inside a sentence: "the very red fox" still states "the fox is red"
CONCISE_HALF_WORDS = 9.0  # conciseness is 0.5 at this many words (three bare facts)
EVAL_SPLIT = 10  # one fact set in EVAL_SPLIT is held out for evaluation (decided by a hash, so any seed is safe)

# -----------------------------------------------------------------------------
# prompts


def facts_prompt(facts):
    """facts: list of (entity, attribute) -> 'facts: the cat is happy . ... summary:'"""
    return "facts: " + " ".join(f"the {e} is {a} ." for e, a in facts) + " summary:"


def is_world_prompt(prompt):
    words = prompt.split()
    return len(words) > 2 and words[0] == "facts:" and words[-1] == "summary:"


def held_out_path(train_path):
    """The world's held-out pairs, world_eval.jsonl beside its training pairs; None for any other data."""
    if os.path.basename(train_path) != "world_train.jsonl":
        return None
    return os.path.join(os.path.dirname(train_path), "world_eval.jsonl")


def parse_prompt(prompt):
    """The prompt's facts as {entity: attribute}."""
    assert is_world_prompt(prompt), prompt
    words = prompt.split()
    return {words[i + 1]: words[i + 3] for i in range(1, len(words) - 1, 5)}  # 'the E is A .' = 5 words


def is_eval_prompt(prompt):
    # Hash the *set* of facts, so that a reordering of a held-out prompt is held out as well.
    key = " ".join(sorted(f"{e}={a}" for e, a in parse_prompt(prompt).items()))
    return zlib.crc32(key.encode()) % EVAL_SPLIT == 0


def _prompts(n, seed, held_out):
    rng, prompts = random.Random(seed), []
    while len(prompts) < n:
        entities = rng.sample(ENTITIES, rng.randint(FACT_COUNTS[0], FACT_COUNTS[-1]))
        facts = [(e, USUAL[e] if rng.random() < P_USUAL else rng.choice([a for a in ATTRIBUTES if a != USUAL[e]]))
                 for e in entities]
        prompt = facts_prompt(facts)
        if is_eval_prompt(prompt) == held_out:
            prompts.append(prompt)
    return prompts


def make_prompts(n, seed):
    """n training prompts (never a held-out fact set)."""
    return _prompts(n, seed, held_out=False)


def eval_prompts(n, seed=1234):
    """n held-out prompts: disjoint from every make_prompts output, whatever the seeds."""
    return _prompts(n, seed, held_out=True)


# -----------------------------------------------------------------------------
# responses: the grammar and the exact scorers


def parse_response(text):
    """The facts a response states, as a list of (entity, attribute) in order, or None if it is ill-formed.
    Grammar: response = sentence+ ; sentence = [prefix] 'the' ['very'] ATTRIBUTE ENTITY '.'"""
    words = text.split()
    if not words or words[-1] != ".":
        return None  # empty, or stops mid-sentence (e.g. cut off by max_new_tokens)
    facts, sentence = [], []
    for word in words:
        if word != ".":
            sentence.append(word)
            continue
        for prefix in PREFIXES:  # at most one prefix; none of them starts with another
            if tuple(sentence[: len(prefix)]) == prefix:
                sentence = sentence[len(prefix):]
                break
        if len(sentence) == 4 and sentence[1] == INTENSIFIER:
            sentence = [sentence[0]] + sentence[2:]
        if len(sentence) != 3 or sentence[0] != "the" or sentence[1] not in ATTRIBUTES or sentence[2] not in ENTITIES:
            return None
        facts.append((sentence[2], sentence[1]))
        sentence = []
    return facts


def count_words(text):
    return sum(word != "." for word in text.split())  # full stops are punctuation, not words


def score(prompt, response):
    """Exact scores of one response: {quality, conciseness, faithfulness, well_formed (0/1), words}."""
    truth, stated, words = parse_prompt(prompt), parse_response(response), count_words(response)
    if stated is None:  # not a summary: nothing to credit (see the module docstring)
        return {"quality": 0.0, "conciseness": 0.0, "faithfulness": 0.0, "well_formed": 0.0, "words": words}
    correct = [truth.get(e) == a for e, a in stated]
    return {
        # distinct prompt facts stated correctly: repeating a fact adds words, not coverage
        "quality": len({fact for fact, ok in zip(stated, correct) if ok}) / len(truth),
        # a hyperbola rather than a clipped line: smooth, never saturates, and each extra word costs less as the
        # summary grows (one word matters more in a 3-word summary than in a 30-word one)
        "conciseness": 1.0 / (1.0 + words / CONCISE_HALF_WORDS),
        "faithfulness": sum(correct) / len(stated),  # the grammar makes a well-formed response state >= 1 fact
        "well_formed": 1.0,
        "words": words,
    }


def preference_labels(scores_a, scores_b, label_temperature, rng):
    """Signed label per objective: +1 = a preferred, -1 = b preferred, 0 = exact tie.
    Bradley-Terry: P(a preferred) = sigmoid((score_a - score_b) / label_temperature); temperature 0 = noiseless."""
    labels = {}
    for k in OBJECTIVES:
        diff = scores_a[k] - scores_b[k]
        if abs(diff) < 1e-9:
            labels[k] = 0
        elif label_temperature == 0:
            labels[k] = 1 if diff > 0 else -1
        else:
            p_a = 0.5 * (1.0 + math.tanh(diff / (2 * label_temperature)))  # = sigmoid(diff / T), overflow-free
            labels[k] = 1 if rng.random() < p_a else -1
    return labels


# -----------------------------------------------------------------------------
# the conflict knob: training pairs whose quality and conciseness agree, conflict, or expose waste

PAIR_KINDS = ("conflict", "agree", "waste")


def pair_kind(prompt, response_a, response_b):
    """How two responses' exact quality and conciseness relate (each kind's labels, noiseless, in brackets):
        "conflict"  the response with more of the prompt's facts uses more words  (opposite labels)
        "agree"     the response with more facts uses no more words              (the same label, or a conciseness tie)
        "waste"     the same quality in more or fewer words                      (a quality tie: fewer words win)
        None        equal on both: the pair teaches neither objective anything."""
    a, b = score(prompt, response_a), score(prompt, response_b)
    quality, conciseness = a["quality"] - b["quality"], a["conciseness"] - b["conciseness"]
    if abs(quality) < 1e-9:
        return "waste" if abs(conciseness) >= 1e-9 else None
    return "conflict" if quality * conciseness < 0 and abs(conciseness) >= 1e-9 else "agree"


def conflict_pairs(prompts, pools, level, label_temperature=0.05, seed=0):
    """Training pairs at a conflict level in [0, 1]: for each prompt, one pair of two of its candidate responses
    (pools[i]: the reference model's samples for prompts[i]), a "conflict" pair with probability `level`, otherwise
    an "agree" or a "waste" pair with equal probability (pair_kind); labelled per objective as the shipped pairs are
    (preference_labels, Bradley-Terry at label_temperature), in the signed format, with the kind beside them.

    The levels are coupled: each prompt's draws (its uniform u, which of its pairs of each kind, the order of the two
    responses, the label noise) depend on the seed and the prompt's index only, and it takes its conflict pair where
    u < level. Raising the level turns some agree and waste pairs into conflict pairs and leaves the rest as they
    were. A prompt drawn for an agree pair that has none takes its waste pair, and the other way round; a prompt
    without a pair of the kind drawn (conflict, or neither agree nor waste) is left out, so that the share of
    conflict pairs can drift from the level by the share of such prompts (the shipped model's: under 0.5%).
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level}")
    rows = []
    for i, (prompt, pool) in enumerate(zip(prompts, pools)):
        rng = random.Random(f"{seed}:{i}")
        u, v = rng.random(), rng.random()
        responses = list(dict.fromkeys(r for r in pool if r))
        by_kind = {kind: [] for kind in PAIR_KINDS}
        for j, a in enumerate(responses):
            for b in responses[j + 1:]:
                kind = pair_kind(prompt, a, b)
                if kind is not None:
                    by_kind[kind].append((a, b))
        labelled = {}
        for kind in PAIR_KINDS:  # every kind's pair and labels drawn first, whichever is kept: the levels stay coupled
            if by_kind[kind]:
                a, b = rng.choice(by_kind[kind])
                a, b = (b, a) if rng.random() < 0.5 else (a, b)
                labelled[kind] = (a, b, preference_labels(score(prompt, a), score(prompt, b), label_temperature, rng))
        wanted = ("conflict",) if u < level else ("agree", "waste") if v < 0.5 else ("waste", "agree")
        kind = next((k for k in wanted if k in labelled), None)
        if kind is None:  # no pair of the kind drawn: left out rather than given another kind
            continue
        a, b, labels = labelled[kind]
        rows.append({"prompt": prompt, "response_a": a, "response_b": b, "kind": kind,
                     **{f"raco_s_{k}": s for k, s in labels.items()}})
    return rows


# -----------------------------------------------------------------------------
# the exact Pareto front: the best trade-off any policy can reach


def dominates(a, b):
    """a dominates b (every objective maximised): at least as good everywhere and strictly better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(points):
    """The points that no other point dominates, in their input order."""
    return [p for p in points if not any(dominates(q, p) for q in points)]


def front_responses(prompt):
    """The only responses that can be on a prompt's Pareto front: its first k facts, bare, for k = 1..n.

    The bare k-fact one weakly dominates, on all three objectives at once, any response stating k distinct facts
    correctly, say in s >= k sentences with F filler words: it has the same quality, faithfulness 1 (the most there
    is) and 3k <= 3s + F words, so at least its conciseness. For k = 0 (only wrong facts: faithfulness 0, quality 0,
    >= 3 words) the 1-fact response is better, and an ill-formed response scores 0 everywhere. Which k facts, and
    whether they are the usual attributes, does not matter: the scores count facts, and a policy reads the prompt.
    tests/method/test_world.py checks this by brute force.
    """
    facts = list(parse_prompt(prompt).items())
    return [" ".join(f"the {a} {e} ." for e, a in facts[:k]) for k in range(1, len(facts) + 1)]


def exact_front(objectives=("quality", "conciseness"), prompts=None):
    """The exact Pareto front of the expected scores over `prompts`, stochastic policies allowed: its vertices, as
    score tuples in the order of `objectives`, sorted along the front (mixing neighbours reaches every point between).

    prompts: None for the expectation over the prompt distribution (FACT_COUNTS uniformly: the front depends on a
    prompt only through its number of facts), or a list such as eval_prompts(256), each prompt weighing the same.
    On one prompt a policy reaches the convex hull of its front responses' scores (mixtures), whose front is their
    upper hull; over prompts, the average of one such point per prompt. For weights w the best average w . score is
    the average of each prompt's best, so the average's front walks all prompts' edges in order of slope, from the
    average of their first vertices. Conciseness 3 / (3 + n * quality) is convex in quality, so on one prompt the
    k-fact responses for 1 < k < n lie below mixtures of the 1-fact and n-fact ones. An objective constant on each
    prompt's front (faithfulness: 1) is carried as its average, so the triple reduces to quality-conciseness.
    """
    if prompts is None:
        prompts = [facts_prompt([(e, USUAL[e]) for e in ENTITIES[:n]]) for n in FACT_COUNTS]
    fronts = [sorted(pareto_front({tuple(score(p, r)[k] for k in objectives) for r in front_responses(p)}))
              for p in prompts]  # sorted by the first objective that varies: those before it are constant
    varying = [i for i in range(len(objectives)) if any(len({v[i] for v in f}) > 1 for f in fronts)]
    if len(varying) > 2:
        raise NotImplementedError("a front in more than two varying objectives (this world has none)")
    if not varying:
        return [tuple(sum(f[0][i] for f in fronts) / len(fronts) for i in range(len(objectives)))]
    x, y = varying  # a non-dominated set with one varying objective is a single point, so there are two
    chains = []
    for front in fronts:  # the upper hull: drop a vertex on or below the chord from the one before it to the next
        chain = []
        for v in front:
            while len(chain) > 1 and ((chain[-1][x] - chain[-2][x]) * (v[y] - chain[-2][y])
                                      >= (chain[-1][y] - chain[-2][y]) * (v[x] - chain[-2][x])):
                chain.pop()
            chain.append(v)
        chains.append(chain)
    edges = sorted(((b[x] - a[x], b[y] - a[y]) for c in chains for a, b in zip(c, c[1:])), key=lambda e: -e[1] / e[0])
    vertex = [math.fsum(c[0][i] for c in chains) / len(chains) for i in range(len(objectives))]
    vertices = [tuple(vertex)]
    for j, (dx, dy) in enumerate(edges):  # a vertex after each run of equal slopes (prompts with as many facts)
        if j + 1 == len(edges) or not math.isclose(dy / dx, edges[j + 1][1] / edges[j + 1][0], rel_tol=1e-9):
            for i, d in ((x, 0), (y, 1)):  # summed exactly (fsum): 256 small steps would not quite reach 1.0
                vertex[i] = math.fsum([c[0][i] for c in chains] + [e[d] for e in edges[:j + 1]]) / len(chains)
            vertices.append(tuple(vertex))
    return vertices


# -----------------------------------------------------------------------------
# a policy's scores, printed


def print_comparison(before, after, names, weights, examples=3):
    """The reference's and the trained policy's scores side by side, what each column is, and both models' first
    responses to the same held-out prompts."""
    keys = list(names) + ["weighted", "well_formed", "words", "kl"] + (["to_front"] if "to_front" in after else [])
    print(f"{'held-out samples':<18}" + "".join(f"{k:>13}" for k in keys))
    for label, scores in (("reference", before), ("trained policy", after)):
        print(f"{label:<18}" + "".join(f"{scores[k]:>13.3f}" for k in keys))
    print(f"{', '.join(names)}: exact scores (world.py), the mean over {after['samples']} responses "
          "(4 per held-out prompt, temperature 0.6)")
    print(f"weighted: {' + '.join(f'{w:g} x {n}' for w, n in zip(weights, names))}; well_formed: the share the "
          "world's grammar reads (others score 0)")
    print("words: per response; kl: KL(policy || reference), the mean of log pi - log pi_ref over its own samples "
          "at temperature 1")
    if "to_front" in after:
        print(f"to_front: how much more of both {names[0]} and {names[1]} the world's exact front offers")
    pairs = list(zip(before.get("examples", []), after.get("examples", [])))[:examples]
    if pairs:
        print("\nthe first response of each model to the same held-out prompts:")
    for reference, policy in pairs:
        print(f"{reference['prompt']}\n  reference       {reference['response']}\n"
              f"  trained policy  {policy['response']}")
