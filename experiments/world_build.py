"""The embedded world's reference model and preference pairs, built from the task in world.py.

The tokenizer is word level; the reference is a 134k-parameter Llama pretrained on the writer's summaries (human-like
summaries of varying quality: some facts, sometimes filler, sometimes a wrong fact); the pairs are two samples of
that model per prompt, scored exactly and labelled per objective, Bradley-Terry style.

Token convention (pretraining here and the DPO code): the model sees
    [bos] prompt-ids response-ids [eos]
with prompt-ids = tokenizer(prompt)["input_ids"] (its post-processor prepends <bos>) and
     response-ids = tokenizer(response, add_special_tokens=False)["input_ids"].
The tokenizer is word level and splits on whitespace, so this equals tokenizing prompt + " " + response: the
boundary is exact and no token straddles it. Decoding joins words with single spaces.

    python experiments/world_build.py build  # tokenizer and model in out/world/world-tiny/, pairs in out/world/data/,
                                             # then compared with the shipped world, file by file (~3 min)
    python experiments/world_build.py stats  # score fresh samples of the shipped model on held-out prompts
    python experiments/world_build.py conflict --levels 0,0.5,1  # pairs at chosen conflict levels from 8 samples
                                             # of the shipped model per prompt (world.conflict_pairs), out/conflict/data

The build never writes over the shipped world unless told to (--out-model models/world-tiny --out-data data). With
torch 2.13.0 (CPU build), transformers 5.24 and tokenizers 0.23 on x86-64 it reproduces every shipped file byte for
byte; other releases may round, and so sample, differently, which the comparison at its end then names.
"""
import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time

import torch

if __package__ in (None, ""):  # run as a script, python experiments/world_build.py: the project's modules are one up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.command_line import THREADS_HELP, OneLineParser, check_flags, check_sampling, run_command, use_threads
from harness.errors import DataError, UsageError
from harness.metrics import pearson
from harness.models import load_model
from harness.run_directory import check_writable, input_fingerprints, write_json
from harness.sampling import Sampling, sample
from world import (ATTRIBUTES, ENTITIES, INTENSIFIER, OBJECTIVES, PAIR_KINDS, PREFIXES, USUAL, conflict_pairs,
                   eval_prompts, make_prompts, parse_prompt, preference_labels, score)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


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
    responses, _ = sample(model, tokenizer, prompts,
                          Sampling(num_samples=2, temperature=1.0, max_new_tokens=48, seed=seed, batch_size=256))
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


@dataclasses.dataclass(frozen=True)
class Build:
    """The world's build settings (the shipped world's are the defaults): the seed of everything, pretraining steps,
    batch size and peak learning rate, pairs on training and on held-out prompts, the labels' Bradley-Terry noise."""
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    train_pairs: int = 3000
    eval_pairs: int = 256
    label_temperature: float = 0.05


def build(out_model="models/world-tiny", out_data="data", settings=Build(), verbose=True):
    """Tokenizer -> pretrained reference model -> preference pairs from its own samples. Deterministic in its seed."""
    seed, steps, batch_size, lr = settings.seed, settings.steps, settings.batch_size, settings.lr
    train_pairs, eval_pairs, label_temperature = settings.train_pairs, settings.eval_pairs, settings.label_temperature
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


def conflict_data(model_dir, out_dir, levels, prompts=3000, samples=8, seed=0, label_temperature=0.05,
                  held_out="data/world_eval.jsonl"):
    """Training pairs at each conflict level (world.conflict_pairs) from one pool of candidate responses: `samples`
    samples of the model at temperature 1 for each of the shipped build's training prompts (the first `prompts` of
    make_prompts(., seed + 1)), kept in out_dir/pool.json and reused while its settings hold. Each level's pairs go to
    out_dir/level-<level>/world_train.jsonl beside a copy of the held-out pairs, written only when they change (a
    sweep reuses runs trained after its data was written). Returns {level: that directory}."""
    settings = {**input_fingerprints(held_out, model_dir), "prompts": prompts, "samples": samples, "seed": seed}
    pool_path = os.path.join(out_dir, "pool.json")
    pool = None
    if os.path.isfile(pool_path):
        with open(pool_path) as f:
            pool = json.load(f)
    if pool is None or pool.get("settings") != settings:
        tokenizer, model = load_model(model_dir, torch.device("cpu"), "--model")
        texts = make_prompts(prompts, seed + 1)
        responses, _ = sample(model, tokenizer, texts, Sampling(num_samples=samples, temperature=1.0,
                                                                max_new_tokens=48, seed=seed + 2, batch_size=256))
        pool = {"settings": settings, "prompts": texts, "responses": responses}
        write_json(pool_path, pool)
    directories = {}
    for level in levels:
        rows = conflict_pairs(pool["prompts"], pool["responses"], level, label_temperature, seed + 3)
        if not rows:
            raise DataError(f"{model_dir}: its samples for {prompts} prompts hold no pair of the kinds conflict level "
                            f"{level:g} draws (are they summaries? python experiments/world_build.py stats)")
        directory = os.path.join(out_dir, f"level-{level:g}")
        os.makedirs(directory, exist_ok=True)
        for name, text in (("world_train.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                           ("world_eval.jsonl", open(held_out).read())):
            path = os.path.join(directory, name)
            if not os.path.isfile(path) or open(path).read() != text:
                with open(path + ".tmp", "w") as f:
                    f.write(text)
                os.replace(path + ".tmp", path)
        directories[level] = directory
    return directories


def parse_levels(text):
    """--levels: comma-separated conflict levels in [0, 1], distinct, in increasing order."""
    try:
        levels = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--levels: expected comma-separated numbers in [0, 1], got {text!r}") from None
    if not levels or sorted(set(levels)) != levels or not 0 <= levels[0] <= levels[-1] <= 1:
        raise UsageError(f"--levels: expected distinct increasing numbers in [0, 1], got {text!r}")
    return levels


SHIPPED = {"models/world-tiny": ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                 "tokenizer_config.json"),
           "data": ("world_train.jsonl", "world_eval.jsonl")}


def compare_with_shipped(out_model, out_data, root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """Which of the shipped world's files the build reproduced byte for byte: (same, different) lists of names."""
    same, different = [], []
    for (shipped, names), built in zip(SHIPPED.items(), (out_model, out_data)):
        for name in names:
            with open(os.path.join(root, shipped, name), "rb") as a, open(os.path.join(built, name), "rb") as b:
                (same if a.read() == b.read() else different).append(f"{shipped}/{name}")
    return same, different


def stats(model_dir="models/world-tiny", n=512, temperature=1.0, seed=0):
    tokenizer, model = load_model(model_dir, torch.device("cpu"), "--out-model")
    prompts = eval_prompts(n, seed=seed)
    responses, _ = sample(model, tokenizer, prompts,
                          Sampling(1, temperature, max_new_tokens=48, seed=seed, batch_size=256))
    for prompt, (response,) in list(zip(prompts, responses))[:4]:
        print(f"{prompt}\n    {response}\n    {score(prompt, response)}")
    describe_samples(prompts, responses)


def main(argv=None):
    parser = OneLineParser(description="Build or inspect the embedded multi-objective world.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["build", "stats", "conflict"])
    parser.add_argument("--out-model", default=argparse.SUPPRESS, help="model + tokenizer folder (default: "
                        "out/world/world-tiny to build, the shipped models/world-tiny for stats and conflict)")
    parser.add_argument("--out-data", default=argparse.SUPPRESS, help="folder of world_train.jsonl / world_eval.jsonl "
                        "(default: out/world/data; for conflict out/conflict/data, a folder per level)")
    parser.add_argument("--levels", default="0,0.33,0.67,1", help="conflict: the shares of conflicting pairs "
                        "(world.conflict_pairs)")
    parser.add_argument("--pool-samples", type=int, default=8, help="conflict: candidate responses per prompt")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the init and the sampling")
    parser.add_argument("--steps", type=int, default=2000, help="pretraining steps")
    parser.add_argument("--train-pairs", type=int, default=3000, help="pairs on training prompts")
    parser.add_argument("--eval-pairs", type=int, default=256, help="pairs on held-out prompts")
    parser.add_argument("--label-temperature", type=float, default=0.05, help="Bradley-Terry label noise")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (stats)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP + "; stats only: the build always uses "
                                                                            "1, so that its weights do not depend on "
                                                                            "the machine")
    args = parser.parse_args(argv)
    check_flags(args, [("steps", args.steps > 0), ("train_pairs", args.train_pairs > 0),
                       ("eval_pairs", args.eval_pairs > 0), ("pool_samples", args.pool_samples > 1),
                       ("label_temperature", 0 < args.label_temperature < math.inf)])
    check_flags(args, [("threads", args.threads >= 0)])
    check_sampling(args.temperature, [args.seed])
    if args.command == "build":  # both outputs checked now, not after minutes of pretraining
        out_model = getattr(args, "out_model", "out/world/world-tiny")
        out_data = getattr(args, "out_data", "out/world/data")
        check_writable(out_model, "--out-model")
        check_writable(out_data, "--out-data")
        build(out_model, out_data, Build(seed=args.seed, steps=args.steps, train_pairs=args.train_pairs,
                                         eval_pairs=args.eval_pairs, label_temperature=args.label_temperature))
        same, different = compare_with_shipped(out_model, out_data)
        print(f"byte for byte the shipped world's: {', '.join(same) or 'none'}"
              + (f"\ndifferent from the shipped world's: {', '.join(different)}" if different else ""))
    elif args.command == "conflict":
        levels, out_data = parse_levels(args.levels), getattr(args, "out_data", "out/conflict/data")
        check_writable(out_data, "--out-data")
        use_threads(args.threads)
        for level, directory in conflict_data(getattr(args, "out_model", "models/world-tiny"), out_data, levels,
                                              args.train_pairs, args.pool_samples, args.seed,
                                              args.label_temperature).items():
            with open(os.path.join(directory, "world_train.jsonl")) as f:
                rows = [json.loads(line) for line in f]
            kinds = ", ".join(f"{k} {sum(r['kind'] == k for r in rows) / len(rows):.2f}" for k in PAIR_KINDS)
            print(f"level {level:g}: {directory}/world_train.jsonl, {len(rows)} pairs ({kinds})")
            describe_labels(f"  level {level:g}", rows)
    else:
        use_threads(args.threads)
        stats(getattr(args, "out_model", "models/world-tiny"), temperature=args.temperature, seed=args.seed)


if __name__ == "__main__":
    run_command(main)
