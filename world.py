"""
The embedded multi-objective world: a tiny summarisation task with exact scorers, its tokenizer, a tiny reference LM
pretrained on it, and preference pairs labelled per objective from that model's own samples.

It mirrors the paper's Reddit TL;DR setting (SPEC §5): summary quality vs conciseness (m = 2), plus faithfulness
(m = 3). Here the "reward models" are exact rules, so every metric can be checked by hand.

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

Token convention (pretraining here and the DPO code): the model sees
    [bos] prompt-ids response-ids [eos]
with prompt-ids = tokenizer(prompt)["input_ids"] (its post-processor prepends <bos>) and
     response-ids = tokenizer(response, add_special_tokens=False)["input_ids"].
The tokenizer is word level and splits on whitespace, so this equals tokenizing prompt + " " + response: the
boundary is exact and no token straddles it. Decoding joins words with single spaces.

    python world.py build     # tokenizer + model in models/world-tiny/, pairs in data/ (~2.5 minutes on 2 CPUs)
    python world.py stats     # score fresh samples of the shipped model on held-out prompts
"""
import argparse
import json
import math
import os
import random
import time
import zlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from metrics import pareto_front, pearson
from policy import sample

OBJECTIVES = ("quality", "conciseness", "faithfulness")

ENTITIES = ("cat", "dog", "owl", "fox", "bee", "cow", "pig", "hen", "ant", "rat", "bat", "elk")
ATTRIBUTES = ("happy", "fast", "old", "red", "small", "big", "slow", "young", "brown", "green", "blue", "tall")
USUAL = dict(zip(ENTITIES, ATTRIBUTES))  # world knowledge: the cat is usually happy, the dog usually fast, ...
P_USUAL = 0.75  # a prompt gives an animal its usual attribute with this probability, another one otherwise
FACT_COUNTS = (3, 4, 5)  # a prompt states this many facts, each count equally likely
PREFIXES = (("also",), ("we", "see"), ("and", "then", "we", "see"))  # filler before a sentence
INTENSIFIER = "very"  # filler inside a sentence: "the very red fox" still states "the fox is red"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
CONCISE_HALF_WORDS = 9.0  # conciseness is 0.5 at this many words (three bare facts)
EVAL_SPLIT = 10  # one fact set in EVAL_SPLIT is held out for evaluation (decided by a hash, so any seed is safe)

# -----------------------------------------------------------------------------
# prompts


def render_prompt(facts):
    """facts: list of (entity, attribute) -> 'facts: the cat is happy . ... summary:'"""
    return "facts: " + " ".join(f"the {e} is {a} ." for e, a in facts) + " summary:"


def is_world_prompt(prompt):
    words = prompt.split()
    return len(words) > 2 and words[0] == "facts:" and words[-1] == "summary:"


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
        prompt = render_prompt(facts)
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


def is_well_formed(text):
    return parse_response(text) is not None


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
# the writer: the pretraining distribution of responses


def write_response(prompt, rng):
    """One human-like summary of varying quality. Coverage is uniform over 1..n facts; writers who try to say more
    also slip more often (the wrong-fact rate grows with coverage), which adds to the quality/faithfulness tension."""
    truth = list(parse_prompt(prompt).items())
    covered = rng.sample(truth, rng.randint(1, len(truth)))
    if rng.random() < 0.6:
        covered.sort(key=truth.index)  # most writers follow the prompt's order
    facts = []
    for e, a in covered:
        facts.append((e, a))
        if rng.random() < 0.04 * len(covered):
            if rng.random() < 0.5:  # a contradicted attribute ...
                facts.append((e, rng.choice([x for x in ATTRIBUTES if x != a])))
            else:  # ... or an animal that is not in the prompt
                other = rng.choice([x for x in ENTITIES if x not in dict(truth)])
                facts.append((other, USUAL[other]))
    sentences = []
    for e, a in facts:
        prefix = " ".join(rng.choice(PREFIXES)) + " " if rng.random() < 0.25 else ""
        very = INTENSIFIER + " " if rng.random() < 0.15 else ""
        sentences.append(f"{prefix}the {very}{a} {e} .")
    return " ".join(sentences)


# -----------------------------------------------------------------------------
# the exact Pareto front: the best trade-off any policy can reach


def front_responses(prompt):
    """The only responses that can be on a prompt's Pareto front: its first k facts, bare, for k = 1..n.

    The bare k-fact one weakly dominates, on all three objectives at once, any response stating k distinct facts
    correctly, say in s >= k sentences with F filler words: it has the same quality, faithfulness 1 (the most there
    is) and 3k <= 3s + F words, so at least its conciseness. For k = 0 (only wrong facts: faithfulness 0, quality 0,
    >= 3 words) the 1-fact response is better, and an ill-formed response scores 0 everywhere. Which k facts, and
    whether they are the usual attributes, does not matter: the scores count facts, and a policy reads the prompt.
    tests/test_world.py checks this by brute force.
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
        prompts = [render_prompt([(e, USUAL[e]) for e in ENTITIES[:n]]) for n in FACT_COUNTS]
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
# tokenizer and model


def train_tokenizer(texts):
    """Word-level tokenizer trained on the world's text, wrapped for transformers; tokenizer(prompt) prepends <bos>.
    The world's whole vocabulary is added to the texts, so that no world word is <unk> however small the corpus."""
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()), min_frequency=1)
    vocabulary = " ".join(("facts: summary: the is .", INTENSIFIER) + ENTITIES + ATTRIBUTES + sum(PREFIXES, ()))
    tok.train_from_iterator([vocabulary, *texts], trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # no word has '##': joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def encode_batch(tokenizer, prompts, responses):
    """[bos] prompt response [eos], right-padded -> input_ids, attention_mask, labels, each (B, T). labels are -100 on
    the prompt and the padding: the reference model is a summariser, trained on responses only."""
    rows = []
    for prompt, response in zip(prompts, responses):
        p = tokenizer(prompt)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p + r, [-100] * len(p) + r))
    B, T = len(rows), max(len(ids) for ids, _ in rows)
    input_ids = torch.full((B, T), tokenizer.pad_token_id)
    labels = torch.full((B, T), -100)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask, labels


def make_model(tokenizer, hidden=64, layers=2, heads=4):
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


# -----------------------------------------------------------------------------
# preference pairs, statistics and the build


def make_pairs(model, tokenizer, prompts, label_temperature, seed):
    """Two samples of the reference model per prompt, scored exactly, labelled per objective ('signed' rows).
    A pair with an empty sample (an immediate EOS, ~1 in 5000) is dropped: loaders reject empty completions."""
    responses, _ = sample(model, tokenizer, prompts, num_samples=2, temperature=1.0, max_new_tokens=48, seed=seed,
                          batch_size=256)
    rng, rows = random.Random(seed), []
    for prompt, (a, b) in zip(prompts, responses):
        if not a or not b:
            continue
        labels = preference_labels(score(prompt, a), score(prompt, b), label_temperature, rng)
        rows.append({"prompt": prompt, "response_a": a, "response_b": b,
                     **{f"raco_s_{k}": v for k, v in labels.items()}})
    return rows


def describe_samples(prompts, responses):
    """Print the well-formed rate, the mean scores and the objectives' Pearson correlation matrix."""
    scores = [score(p, r) for p, rs in zip(prompts, responses) for r in rs]
    n = len(scores)
    print(f"{n} samples: well-formed {sum(s['well_formed'] for s in scores) / n:.3f}, "
          f"mean words {sum(s['words'] for s in scores) / n:.2f}")
    print("mean scores: " + ", ".join(f"{k} {sum(s[k] for s in scores) / n:.3f}" for k in OBJECTIVES))
    print("pearson".ljust(14) + "".join(k.rjust(14) for k in OBJECTIVES))
    for a in OBJECTIVES:
        print(a.ljust(14) + "".join(f"{pearson([s[a] for s in scores], [s[b] for s in scores]):14.3f}"
                                    for b in OBJECTIVES))


def describe_labels(name, rows):
    """Label frequencies per objective, and how often two objectives' labels disagree where neither is a tie."""
    print(f"{name} ({len(rows)} pairs) labels +1/0/-1: " + ", ".join(
        f"{k} " + "/".join(f"{sum(r[f'raco_s_{k}'] == v for r in rows) / len(rows):.2f}" for v in (1, 0, -1))
        for k in OBJECTIVES))
    for i, a in enumerate(OBJECTIVES):
        for b in OBJECTIVES[i + 1:]:
            both = [r for r in rows if r[f"raco_s_{a}"] and r[f"raco_s_{b}"]]
            opposed = sum(r[f"raco_s_{a}"] != r[f"raco_s_{b}"] for r in both)
            print(f"  {a} vs {b}: opposite labels on {opposed}/{len(both)} pairs where both are decided")


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def build(out_model="models/world-tiny", out_data="data", seed=0, steps=2000, batch_size=64, lr=3e-3,
          train_pairs=3000, eval_pairs=256, label_temperature=0.05, verbose=True):
    """Tokenizer -> pretrained reference model -> preference pairs from its own samples. Deterministic in seed."""
    log = print if verbose else (lambda *args: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the weights then do not depend on the core count, and tiny matmuls gain little
    t0 = time.time()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = train_tokenizer([p + " " + write_response(p, rng) for p in make_prompts(1000, seed)])
    model = make_model(tokenizer)
    log(f"tokenizer: {len(tokenizer)} tokens; model: {sum(p.numel() for p in model.parameters())} parameters")

    # Pretraining: a fresh batch from the writer every step (the world is unbounded, so there is no epoch to overfit).
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay to 10% of lr
        optimizer, lambda t: min(1.0, (t + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(t / steps, 1.0))))
    model.train()
    for step in range(steps):
        prompts = make_prompts(batch_size, seed=rng.getrandbits(32))
        input_ids, attention_mask, labels = encode_batch(tokenizer, prompts, [write_response(p, rng) for p in prompts])
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  ({time.time() - t0:.0f}s)")
    model.eval()
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, max_new_tokens=48)
    os.makedirs(out_model, exist_ok=True)
    model.save_pretrained(out_model, safe_serialization=True)
    tokenizer.save_pretrained(out_model)
    t1 = time.time()
    log(f"pretrained and saved to {out_model} in {t1 - t0:.1f}s")

    # Preference pairs from the model's own samples: training prompts, and held-out prompts for the eval file.
    train_rows = make_pairs(model, tokenizer, make_prompts(train_pairs, seed + 1), label_temperature, seed + 2)
    eval_rows = make_pairs(model, tokenizer, eval_prompts(eval_pairs, seed + 3), label_temperature, seed + 4)
    os.makedirs(out_data, exist_ok=True)
    write_jsonl(os.path.join(out_data, "world_train.jsonl"), train_rows)
    write_jsonl(os.path.join(out_data, "world_eval.jsonl"), eval_rows)
    log(f"sampled {len(train_rows)} train and {len(eval_rows)} eval pairs in {time.time() - t1:.1f}s "
        f"(build total {time.time() - t0:.1f}s)")
    if verbose:
        describe_samples([r["prompt"] for r in train_rows], [[r["response_a"], r["response_b"]] for r in train_rows])
        describe_labels("train", train_rows)
        describe_labels("eval", eval_rows)
    torch.set_num_threads(threads)
    return model, tokenizer


def stats(model_dir="models/world-tiny", n=512, temperature=1.0, seed=0):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    prompts = eval_prompts(n, seed=seed)
    responses, _ = sample(model, tokenizer, prompts, 1, temperature, max_new_tokens=48, seed=seed, batch_size=256)
    for prompt, (response,) in list(zip(prompts, responses))[:4]:
        print(f"{prompt}\n    {response}\n    {score(prompt, response)}")
    describe_samples(prompts, responses)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build or inspect the embedded multi-objective world.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["build", "stats"])
    parser.add_argument("--out-model", default="models/world-tiny", help="model + tokenizer folder")
    parser.add_argument("--out-data", default="data", help="folder of world_train.jsonl / world_eval.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the init and the sampling")
    parser.add_argument("--steps", type=int, default=2000, help="pretraining steps")
    parser.add_argument("--train-pairs", type=int, default=3000, help="pairs on training prompts")
    parser.add_argument("--eval-pairs", type=int, default=256, help="pairs on held-out prompts")
    parser.add_argument("--label-temperature", type=float, default=0.05, help="Bradley-Terry label noise")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (stats)")
    args = parser.parse_args()
    if args.command == "build":
        build(args.out_model, args.out_data, seed=args.seed, steps=args.steps, train_pairs=args.train_pairs,
              eval_pairs=args.eval_pairs, label_temperature=args.label_temperature)
    else:
        stats(args.out_model, temperature=args.temperature, seed=args.seed)
