"""Evaluation: how good is one trained policy, and how do the methods' Pareto fronts compare.

    python eval.py --checkpoint out/train          # one policy vs its reference: held-out pairs, samples, KL
    python eval.py --checkpoint out/pku --data PKU-Alignment/PKU-SafeRLHF --split test \
        --reward-models helpful=PATH_OR_ID,harmless=PATH_OR_ID      # real data: reward models score the samples
    python eval.py --pareto                        # 6 methods x 5 weights x 3 seeds on the world (~10-20 min CPU)
    python eval.py --pareto --quick                # the same in miniature (about a minute)

For a policy pi and its reference pi_ref:
- held-out pairs: per objective, the implicit-reward accuracy and margin, r(y) = beta (log pi(y|x) - log pi_ref(y|x))
  (SPEC section 1). It needs no judge, so it works on any data set.
- sampled responses (temperature 0.6, as in the paper): each objective's score -- exact on the embedded world,
  a reward model's scalar logit on real data -- the well-formed rate, the length, and KL(pi || pi_ref).
- the sweep: each method's hypervolume, its weight fidelity (Spearman rank correlation of a weight with its
  objective's score across the sweep), and which front dominates which.
Standard errors treat *prompts* as the independent units (a prompt's samples are averaged first): samples of one
prompt are correlated, and counting them as independent would understate the error.
"""
import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tqdm import tqdm

import data
import dpo
import train
import world
from train import UsageError

# ----------------------------------------------------------------------------- metrics: pure functions


def dominates(a, b):
    """a dominates b (every objective maximised): at least as good everywhere and strictly better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(points):
    """The points that no other point dominates, in their input order."""
    return [p for p in points if not any(dominates(q, p) for q in points)]


def hypervolume_2d(points, reference):
    """Area of the region dominated by `points` and dominating `reference` (both objectives maximised).

    Walk the points by decreasing first objective: each point that reaches higher than all before it adds the strip
    between its height and the best height so far, as wide as its distance from the reference in the first
    objective. A dominated point never reaches higher, so it adds nothing; a point not strictly better than the
    reference in both objectives lies outside the region and is dropped.
    """
    inside = [p for p in points if p[0] > reference[0] and p[1] > reference[1]]
    area, best = 0.0, reference[1]
    for x, y in sorted(inside, key=lambda p: (-p[0], -p[1])):
        if y > best:
            area += (x - reference[0]) * (y - best)
            best = y
    return area


def ranks(values):
    """1-based ranks; tied values share the mean of the ranks they span ([5, 7, 7] -> [1, 2.5, 2.5])."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result, start = [0.0] * len(values), 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in order[start:end + 1]:
            result[k] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x, y):
    """Spearman's rank correlation: Pearson's correlation of the tie-averaged ranks; nan if either is constant."""
    return world.pearson(ranks(x), ranks(y))


def mean_se(values, group_size=1):
    """(mean, standard error), averaging each run of `group_size` consecutive values (one prompt's samples) first:
    the error is the std of the group means over sqrt(number of groups); nan for a single group."""
    values = [float(v) for v in values]
    groups = [sum(values[i:i + group_size]) / len(values[i:i + group_size]) for i in range(0, len(values), group_size)]
    n, mean = len(groups), sum(groups) / len(groups)
    return mean, math.sqrt(sum((g - mean) ** 2 for g in groups) / (n - 1) / n) if n > 1 else math.nan


def mean_std(values):
    """(mean, std) over seeds, ignoring nan; std is 0 for one value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))


def kl_estimate(policy_logps, reference_logps, group_size=1):
    """KL(pi || pi_ref) = E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)] from samples y drawn from pi itself (temperature
    1): (mean, standard error). The estimate is unbiased, so a finite sample may read slightly below 0."""
    return mean_se([p - r for p, r in zip(policy_logps, reference_logps)], group_size)


def fraction_dominated(points, others):
    """Fraction of `points` dominated by the front of `others`."""
    front = pareto_front(others)
    return sum(any(dominates(q, p) for q in front) for p in points) / len(points)


# ----------------------------------------------------------------------------- sampling and scoring


def prompt_ids(tokenizer, prompt, max_prompt_length):
    """The prompt's ids as dpo.tokenize_pairs builds them (BOS kept when the end is cut), so samples and pairs are
    conditioned on the same tokens."""
    return dpo.truncate_prompt(dpo.prompt_ids(tokenizer, [prompt])[0], max_prompt_length, tokenizer.bos_token_id)


@torch.no_grad()
def sample(model, tokenizer, prompts, num_samples, temperature, max_new_tokens=64, seed=0, batch_size=32,
           max_prompt_length=192):
    """num_samples responses per prompt, generated for batches of left-padded prompts (so every row continues from
    its own last prompt token). Returns (texts, batches): texts[i] lists prompt i's responses; each batch holds
    input_ids, attention_mask and completion_mask (N, T), the last marking the sampled tokens up to and including
    the first EOS, for sampled_logps. Deterministic in seed; the global RNG and the model's mode are left as found."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, batches = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", leave=False, dynamic_ncols=True):
            rows = [prompt_ids(tokenizer, p, max_prompt_length) for p in prompts[start:start + batch_size]]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            # top_k=0, top_p=1: sample the model's own distribution, whatever its generation_config suggests
            out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            new = out[:, width:]
            is_eos = (new == tokenizer.eos_token_id).long()
            keep = (is_eos.cumsum(-1) - is_eos) == 0  # every token up to and including the first EOS
            prompt_mask = attention.repeat_interleave(num_samples, dim=0)
            batches.append({"input_ids": out, "attention_mask": torch.cat([prompt_mask, keep.long()], 1),
                            "completion_mask": torch.cat([torch.zeros_like(prompt_mask), keep.long()], 1)})
            decoded = [tokenizer.decode(ids[k & (e == 0)], skip_special_tokens=True).strip()
                       for ids, k, e in zip(new, keep, is_eos)]
            texts += [decoded[i:i + num_samples] for i in range(0, len(decoded), num_samples)]
    model.train(was_training)
    return texts, batches


@torch.no_grad()
def sampled_logps(model, batches, rows_per_forward=32):
    """log pi(y|x) of the sampled token ids (re-tokenized text need not give the same ids): a list of N floats.
    Position ids skip the left padding, as generate's do, so each row is scored as it was sampled. A few rows per
    forward: the (rows, T, vocabulary) logits of a real model are the memory peak."""
    was_training, out = model.training, []
    model.eval()
    for b in batches:
        for i in range(0, len(b["input_ids"]), rows_per_forward):
            ids, mask, completion = (b[k][i:i + rows_per_forward] for k in ("input_ids", "attention_mask",
                                                                             "completion_mask"))
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            out += dpo.sequence_logps(logits, ids, completion)[0].tolist()
    model.train(was_training)
    return out


def load_reward_models(spec, device):
    """'name=PATH_OR_ID,...' -> {name: (tokenizer, model)}: sequence classifiers whose one output is the reward."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    models = {}
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        name, _, path = (x.strip() for x in item.partition("="))
        if not name or not path:
            raise UsageError(f"--reward-models: expected name=PATH_OR_ID[,name=PATH_OR_ID...], got {item!r}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise UsageError(f"--reward-models: could not load {path!r}: {data._one_line(error)}") from None
        if model.config.num_labels != 1:
            raise UsageError(f"--reward-models: {path!r} has {model.config.num_labels} outputs; a reward model has 1")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last token that is not padding
        models[name] = (tokenizer, model.to(device).eval())
    return models


@torch.no_grad()
def reward_scores(model, tokenizer, prompts, responses, batch_size=32, max_length=1024):
    """A reward model's scalar logit for each text prompt + response (a space between them unless the prompt
    ends in whitespace), batched with padding: a list of floats."""
    texts = [p + r if p[-1:].isspace() else f"{p} {r}" for p, r in zip(prompts, responses)]
    scores, device = [], next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        scores += model(**batch).logits[:, 0].float().tolist()
    return scores


def evaluate_samples(policy, tokenizer, prompts, num_samples=4, temperature=0.6, seed=0, reference=None,
                     world_objectives=True, reward_models=None, max_new_tokens=64, batch_size=32,
                     max_prompt_length=192):
    """Mean and standard error ("<key>_se") of every score over num_samples responses per prompt: the world's exact
    scores, each reward model's, or the length in tokens; and, given a reference, KL(policy || reference).
    Returns (scores, a few scored examples)."""
    texts, batches = sample(policy, tokenizer, prompts, num_samples, temperature, max_new_tokens, seed, batch_size,
                            max_prompt_length)
    flat_prompts, flat = [p for p in prompts for _ in range(num_samples)], [r for rs in texts for r in rs]
    if world_objectives:
        rows = [world.score(p, r) for p, r in zip(flat_prompts, flat)]
    else:
        rows = [{"tokens": int(m.sum())} for b in batches for m in b["completion_mask"]]
    for name, (rm_tokenizer, rm) in (reward_models or {}).items():
        for row, s in zip(rows, reward_scores(rm, rm_tokenizer, flat_prompts, flat, batch_size)):
            row[name] = s
    scores = {"samples": len(flat)}
    for key in rows[0]:
        scores[key], scores[key + "_se"] = mean_se([row[key] for row in rows], num_samples)
    if reference is not None:  # KL is an expectation under pi itself: draw temperature-1 samples for it
        if temperature != 1.0:
            _, batches = sample(policy, tokenizer, prompts, num_samples, 1.0, max_new_tokens, seed + 1, batch_size,
                                max_prompt_length)
        scores["kl"], scores["kl_se"] = kl_estimate(sampled_logps(policy, batches, batch_size),
                                                    sampled_logps(reference, batches, batch_size), num_samples)
    return scores, [{"prompt": p, "response": r, **row} for p, r, row in list(zip(flat_prompts, flat, rows))[:6]]


def world_scores(model, tokenizer, prompts, num_samples=4, temperature=0.6, seed=0, reference=None):
    """The world's exact scores of sampled responses: the mean of each objective, well_formed and words, each with a
    standard error ("<key>_se"), and "kl", "kl_se" given a reference. (train.py calls this.)"""
    return evaluate_samples(model, tokenizer, prompts, num_samples, temperature, seed, reference)[0]


@torch.no_grad()
def pair_metrics(policy, reference, tokenizer, pairs, names, cfg, device, batch_size=32):
    """Per objective, over all held-out pairs (ties left out): the implicit-reward accuracy and margin, with errors.
    cfg: the train.Config the policy was trained with (beta, max_length, max_prompt_length, dtype)."""
    modes = policy.training, reference.training
    policy.eval(), reference.eval()
    logps = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="pairs", leave=False, dynamic_ncols=True):
        batch = pairs[start:start + batch_size]
        logps.append([x.float().cpu() for model in (policy, reference)
                      for x in train.pair_logps(model, tokenizer, batch, cfg, device)[:2]])
    policy.train(modes[0]), reference.train(modes[1])
    policy_a, policy_b, ref_a, ref_b = (torch.cat(x) for x in zip(*logps))
    signs = torch.tensor([p.signs for p in pairs], dtype=torch.float32)
    metrics = dpo.dpo_metrics(policy_a, policy_b, ref_a, ref_b, signs, cfg.beta, names)
    delta = dpo.log_ratio_margin(policy_a, policy_b, ref_a, ref_b)
    result = {}
    for i, name in enumerate(names):
        signed = (cfg.beta * signs[:, i] * delta)[signs[:, i] != 0].tolist()  # r(chosen) - r(rejected), per pair
        result[name] = {"pairs": len(signed), "accuracy": metrics.get(f"{name}/rewards/accuracies", math.nan),
                        "accuracy_se": mean_se([float(m > 0) for m in signed])[1] if signed else math.nan,
                        "margin": metrics.get(f"{name}/rewards/margins", math.nan),
                        "margin_se": mean_se(signed)[1] if signed else math.nan}
    return result


# ----------------------------------------------------------------------------- one checkpoint


def evaluate_checkpoint(args):
    if not (os.path.isfile(os.path.join(args.checkpoint, "summary.json"))
            and os.path.isdir(os.path.join(args.checkpoint, "policy"))):
        raise UsageError(f"--checkpoint: {args.checkpoint}: expected a train.py output with summary.json and policy/")
    summary = read_json(os.path.join(args.checkpoint, "summary.json"))
    known = {f.name for f in dataclasses.fields(train.Config)}
    cfg = train.Config(**{k: v for k, v in summary["config"].items() if k in known})
    names, device = summary["objectives"], train.pick_device(args.device)
    # names alone are not enough: MOA summarisation data has the world's objective names
    on_world = set(names) <= set(world.OBJECTIVES) and cfg.data.endswith("world_train.jsonl")
    source = args.data or (cfg.data.replace("world_train.jsonl", "world_eval.jsonl") if on_world else None)
    if source is None:
        raise UsageError(f"--data: the policy was trained on {cfg.data}; name its held-out pairs with --data")
    tokenizer, policy = train.load_model(os.path.join(args.checkpoint, "policy"), device, "--checkpoint")
    reference = train.load_model(args.reference or cfg.model, device, "--reference")[1]
    reward_models = load_reward_models(args.reward_models, device)
    try:
        pairs, _ = data.load_pairs(source, args.data_format, names, tokenizer, args.split, args.pairs)
    except data.DataError as error:
        raise UsageError(str(error)) from None
    result = {"checkpoint": args.checkpoint, "method": cfg.method, "weights": summary["weights"],
              "reference": args.reference or cfg.model, "data": source, "objectives": names,
              "pairs": pair_metrics(policy, reference, tokenizer, pairs, names, cfg, device, args.batch_size)}
    if on_world or reward_models:
        prompts = world.eval_prompts(args.prompts) if on_world else \
            list(dict.fromkeys(p.prompt for p in pairs))[:args.prompts]
        result["samples"] = {"prompts": len(prompts), "per_prompt": args.samples, "temperature": args.temperature}
        for label, model in (("reference", reference), ("policy", policy)):
            result["samples"][label], result["samples"][label + "_examples"] = evaluate_samples(
                model, tokenizer, prompts, args.samples, args.temperature, args.seed, reference, on_world,
                reward_models, args.max_new_tokens, args.batch_size, cfg.max_prompt_length)
    out = args.out or os.path.join(args.checkpoint, "eval.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    show = lambda d, k: f"{d[k]:.3f} ± {d[k + '_se']:.3f}"  # noqa: E731
    print(f"{cfg.method} {summary['weights']} against {result['reference']}, held-out pairs of {source}")
    print(f"{'objective':<16}{'pairs':>7}{'accuracy':>20}{'margin':>20}")
    for name, m in result["pairs"].items():
        print(f"{name:<16}{m['pairs']:>7}{show(m, 'accuracy'):>20}{show(m, 'margin'):>20}")
    if "samples" in result:
        s = result["samples"]
        keys = [k for k in s["policy"] if k + "_se" in s["policy"]]
        print(f"\n{len(prompts)} prompts x {args.samples} samples at temperature {args.temperature}, mean ± s.e.")
        print(" " * 10 + "".join(f"{k:>18}" for k in keys))
        for label in ("reference", "policy"):
            print(f"{label:<10}" + "".join(f"{show(s[label], k):>18}" for k in keys))
    print(f"written to {out}")
    return result


# ----------------------------------------------------------------------------- the Pareto sweep

PARETO_OBJECTIVES = ["quality", "conciseness"]
HV_REFERENCE = (0.0, 0.0)  # the worst possible score of both objectives: every trained point counts
QUICK = dict(methods=",".join(train.TRAIN_METHODS), sweep="0.1,0.5,0.9", seeds="0", steps=20, prompts=32,
             samples=2, pairs=128)
FULL = dict(methods=",".join(train.TRAIN_METHODS), sweep="0.1,0.3,0.5,0.7,0.9", seeds="0,1,2",
            steps=100, prompts=64, samples=4, pairs=256)


def point_metrics(policy, reference, tokenizer, eval_pairs, prompts, args, cfg, device):
    """Every metric of one policy as one flat row: sampled scores with errors, KL, held-out pair accuracy/margin."""
    scores, _ = evaluate_samples(policy, tokenizer, prompts, args.samples, args.temperature, cfg.seed, reference,
                                 batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    row = {k: v for k, v in scores.items() if k != "samples"}
    for name, m in pair_metrics(policy, reference, tokenizer, eval_pairs, PARETO_OBJECTIVES, cfg, device,
                                args.batch_size).items():
        row.update({f"pair_accuracy_{name}": m["accuracy"], f"pair_margin_{name}": m["margin"]})
    return row


def read_json(path):
    with open(path) as f:
        return json.load(f)


def sweep_point(cfg, tokenizer, reference, eval_pairs, prompts, args, device, inputs_time):
    """Train one (method, weights, seed) unless an identical run finished after the model and data were last
    written (a rebuilt world keeps its paths), then evaluate it; the evaluation is cached too, so an interrupted
    sweep continues where it stopped. Returns (row, reused)."""
    summary_path, eval_path = os.path.join(cfg.out, "summary.json"), os.path.join(cfg.out, "eval.json")
    reused = os.path.isfile(summary_path) and os.path.getmtime(summary_path) > inputs_time \
        and read_json(summary_path)["config"] == dataclasses.asdict(cfg)
    if not reused:
        train.main(cfg)
    settings = {k: getattr(args, k) for k in ("prompts", "samples", "temperature", "pairs", "max_new_tokens")}
    if reused and os.path.isfile(eval_path) and read_json(eval_path)["settings"] == settings:
        return read_json(eval_path)["row"], True
    policy = train.load_model(os.path.join(cfg.out, "policy"), device)[1]
    w = [float(x) for x in cfg.weights.split(",")]
    row = {"method": cfg.method, "w_quality": w[0], "w_conciseness": w[1], "seed": cfg.seed, "steps": cfg.steps,
           **point_metrics(policy, reference, tokenizer, eval_pairs, prompts, args, cfg, device),
           "train_s": read_json(summary_path)["seconds"]}
    with open(eval_path, "w") as f:
        json.dump({"settings": settings, "row": row}, f, indent=2)
    return row, reused


def run_pareto(args):
    started = time.time()
    for key, value in (QUICK if args.quick else FULL).items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in train.TRAIN_METHODS for m in methods):
        raise UsageError(f"--methods: expected some of {', '.join(train.TRAIN_METHODS)}, got {args.methods!r}")
    try:
        sweep, seeds = [float(w) for w in args.sweep.split(",")], [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--sweep, --seeds: expected comma-separated numbers, got {args.sweep!r}, {args.seeds!r}") \
            from None
    if not all(0 < w < 1 for w in sweep) or len(set(sweep)) != len(sweep) or len(sweep) < 2:
        raise UsageError(f"--sweep: expected two or more distinct weights of quality in (0, 1), got {args.sweep!r}")
    eval_data = args.data.replace("world_train.jsonl", "world_eval.jsonl")
    for path, found in ((args.model, os.path.isdir(args.model)), (args.data, os.path.isfile(args.data)),
                        (eval_data, os.path.isfile(eval_data))):
        if not found:
            raise UsageError(f"{path}: not found; the sweep runs on the embedded world (python world.py build)")
    inputs = [args.data, eval_data] + [os.path.join(args.model, f) for f in os.listdir(args.model)]
    device = train.pick_device(args.device)
    if device.type == "cpu":  # the world's model is tiny: a second thread saves little, and on a busy machine
        torch.set_num_threads(args.threads)  # threads waiting for each other made every step 5-50x slower
    tokenizer, reference = train.load_model(args.model, device)
    try:
        eval_pairs, _ = data.load_pairs(eval_data, "auto", PARETO_OBJECTIVES, tokenizer, limit=args.pairs)
    except data.DataError as error:
        raise UsageError(str(error)) from None
    prompts = world.eval_prompts(args.prompts)
    base = dict(model=args.model, data=args.data, objectives=",".join(PARETO_OBJECTIVES), steps=args.steps,
                eval_prompts=0, device=args.device, log_every=max(1, args.steps // 4))  # evaluated here, once
    rows = [{"method": "reference", "w_quality": math.nan, "w_conciseness": math.nan, "seed": s, "steps": 0,
             **point_metrics(reference, reference, tokenizer, eval_pairs, prompts, args, train.Config(**base, seed=s),
                            device),
             "train_s": 0.0} for s in seeds]  # the same prompts and sampling seeds as each seed's runs
    runs = [(m, w, s) for s in seeds for m in methods for w in sweep]
    for k, (method, w, seed) in enumerate(runs, 1):
        cfg = train.Config(**base, method=method, weights=f"{w:g},{1 - w:g}", seed=seed,
                           out=os.path.join(args.out, "runs", f"{method}-w{w:g}-s{seed}"))
        run_started = time.time()
        row, reused = sweep_point(cfg, tokenizer, reference, eval_pairs, prompts, args, device,
                                  max(os.path.getmtime(p) for p in inputs))
        rows.append(row)
        print(f"\n[{k}/{len(runs)}] {method} w=({w:g}, {1 - w:g}) seed {seed}: quality {row['quality']:.3f} "
              f"conciseness {row['conciseness']:.3f} kl {row['kl']:.3f} "
              f"({'reused' if reused else f'{time.time() - run_started:.0f} s'})", flush=True)
    stats = analyse(rows, methods, sweep, seeds)
    print(write_report(rows, stats, methods, sweep, seeds, args))
    plot_fronts(rows, stats, methods, sweep, os.path.join(args.out, "pareto.png"))
    print(f"sweep done in {time.time() - started:.0f} s: {args.out}/pareto.csv, pareto.md, pareto.png")
    return rows, stats


def front_points(rows, method, seed, sweep):
    """(quality, conciseness) of one method and seed, in sweep order."""
    by_weight = {r["w_quality"]: (r["quality"], r["conciseness"])
                 for r in rows if (r["method"], r["seed"]) == (method, seed)}
    return [by_weight[w] for w in sweep]


def analyse(rows, methods, sweep, seeds):
    """Per method, lists over seeds: hypervolume (reference point HV_REFERENCE) and weight fidelity of both
    objectives; per pair of methods (a, b), the fraction of a's points dominated by b's front."""
    stats = {"hypervolume": {}, "fidelity_quality": {}, "fidelity_conciseness": {}, "dominated": {}}
    fronts = {(m, s): front_points(rows, m, s, sweep) for m in methods for s in seeds}
    for m in methods:
        stats["hypervolume"][m] = [hypervolume_2d(fronts[m, s], HV_REFERENCE) for s in seeds]
        stats["fidelity_quality"][m] = [spearman(sweep, [q for q, _ in fronts[m, s]]) for s in seeds]
        stats["fidelity_conciseness"][m] = [spearman([1 - w for w in sweep], [c for _, c in fronts[m, s]])
                                            for s in seeds]
        for b in methods:
            stats["dominated"][m, b] = [fraction_dominated(fronts[m, s], fronts[b, s]) for s in seeds]
    return stats


def fmt(values):
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def verdict(stats, a, b, n_seeds):
    """Plain words, seed by seed: does a's front dominate b's?"""
    higher = sum(x > y for x, y in zip(stats["hypervolume"][a], stats["hypervolume"][b]))
    wins = sum(x == 0 and y > 0 for x, y in zip(stats["dominated"][a, b], stats["dominated"][b, a]))
    return (f"- **{a} vs {b}**: hypervolume {fmt(stats['hypervolume'][a])} vs {fmt(stats['hypervolume'][b])} "
            f"({a} higher in {higher} of {n_seeds} seeds). Fraction of {a}'s points dominated by {b}'s front: "
            f"{fmt(stats['dominated'][a, b])}; of {b}'s points by {a}'s front: {fmt(stats['dominated'][b, a])}. "
            f"**{a}'s front dominates {b}'s (none of its points dominated, some of {b}'s dominated) in {wins} of "
            f"{n_seeds} seeds{'' if wins == n_seeds else ': not a consistent domination on this world'}.**")


def write_report(rows, stats, methods, sweep, seeds, args):
    """pareto.csv (every row), pareto.md (the summary, the verdict, every point); returns the Markdown."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pareto.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    spread = "mean ± std over seeds" if len(seeds) > 1 else "one seed"
    lines = ["# Pareto sweep on the embedded world: quality vs conciseness", "",
             f"{len(methods)} methods x {len(sweep)} weights x {len(seeds)} seeds, {args.steps} steps each; "
             f"{args.prompts} held-out prompts x {args.samples} samples at temperature {args.temperature}; {spread}. "
             f"Hypervolume: reference point (quality, conciseness) = {HV_REFERENCE}. Fidelity: Spearman correlation "
             "across the sweep between an objective's weight and its score (1: the scores follow the weights' order; "
             "nan: the scores do not change with the weights).", "",
             "| method | hypervolume | fidelity quality | fidelity conciseness | KL, mean over the sweep |",
             "|---|---|---|---|---|"]
    for m in methods:
        kl = [sum(r["kl"] for r in rows if (r["method"], r["seed"]) == (m, s)) / len(sweep) for s in seeds]
        lines.append(f"| {m} | {fmt(stats['hypervolume'][m])} | {fmt(stats['fidelity_quality'][m])} | "
                     f"{fmt(stats['fidelity_conciseness'][m])} | {fmt(kl)} |")
    ref = [r for r in rows if r["method"] == "reference"]
    lines += ["", f"Reference model: quality {fmt([r['quality'] for r in ref])}, conciseness "
                  f"{fmt([r['conciseness'] for r in ref])}.", "", "## Does RACO's front dominate?", ""]
    lines += [verdict(stats, "raco", b, len(seeds)) for b in ("lw", "cagrad") if {"raco", b} <= set(methods)]
    keys = ["quality", "conciseness", "faithfulness", "well_formed", "words", "kl", "pair_accuracy_quality",
            "pair_accuracy_conciseness"]
    lines += ["", f"## Every point ({spread})", "", "| method | w_quality | " + " | ".join(keys) + " |",
              "|---" * (len(keys) + 2) + "|"]
    for m in methods:
        for w in sweep:
            sel = [r for r in rows if (r["method"], r["w_quality"]) == (m, w)]
            lines.append(f"| {m} | {w:g} | " + " | ".join(fmt([r[k] for r in sel]) for k in keys) + " |")
    with open(os.path.join(args.out, "pareto.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def plot_fronts(rows, stats, methods, sweep, path):
    """Each method's front in objective space: mean over seeds, std bars, points labelled by the weight of quality."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for m in methods:
        points = [[r for r in rows if (r["method"], r["w_quality"]) == (m, w)] for w in sweep]
        q, q_std = zip(*[mean_std([r["quality"] for r in p]) for p in points])
        c, c_std = zip(*[mean_std([r["conciseness"] for r in p]) for p in points])
        line = ax.errorbar(q, c, xerr=q_std, yerr=c_std, marker="o", ms=4, capsize=2, lw=1.2,
                           label=f"{m} (hypervolume {fmt(stats['hypervolume'][m])})")
        for w, x, y in zip(sweep, q, c):
            ax.annotate(f"{w:g}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6,
                        color=line[0].get_color())
    ref = [r for r in rows if r["method"] == "reference"]
    ax.plot(mean_std([r["quality"] for r in ref])[0], mean_std([r["conciseness"] for r in ref])[0], "k*", ms=14,
            label="reference model")
    ax.set(xlabel="quality (exact score of samples)", ylabel="conciseness (exact score of samples)")
    ax.set_title(f"Fronts over the weight sweep: labels = weight of quality; bars = std over seeds; hypervolume "
                 f"from {HV_REFERENCE}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage as well: bad input is one line here
        raise UsageError(message)


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])  # defaults stated in each help (some depend on the mode)
    p.add_argument("--checkpoint", help="a train.py output directory (summary.json, policy/)")
    p.add_argument("--reference", help="reference model (default: the checkpoint's recorded --model)")
    p.add_argument("--data", help="held-out pairs (default: world_eval.jsonl for the world, else required); for the "
                                  f"sweep, its training data (default: {train.Config.data})")
    p.add_argument("--data-format", default="auto", help="auto | signed | pku | moa (default: %(default)s)")
    p.add_argument("--split", default="test", help="split of a hub or directory data set (default: %(default)s)")
    p.add_argument("--pairs", type=int, help="held-out pairs at most (default: 512; sweep 256, quick 128)")
    p.add_argument("--prompts", type=int, help="held-out prompts to sample (default: 64; quick 32)")
    p.add_argument("--samples", type=int, help="samples per prompt (default: 4; quick 2)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: %(default)s, "
                                                                   "the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per sample at most (default: %(default)s)")
    p.add_argument("--reward-models", default="", help="name=PATH_OR_ID,...: a sequence classifier per objective")
    p.add_argument("--batch-size", type=int, default=32, help="pairs or prompts per forward or generate call "
                                                              "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s; the sweep samples with "
                                                       "each run's training seed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--out", help="eval.json path (default: in the checkpoint); the sweep's directory "
                                 "(default: out/pareto)")
    p.add_argument("--pareto", action="store_true", help="train and evaluate every method over a weight sweep")
    p.add_argument("--quick", action="store_true", help="the sweep in miniature")
    p.add_argument("--methods", help=f"sweep methods (default: {FULL['methods']})")
    p.add_argument("--sweep", help=f"weights of quality (default: {FULL['sweep']}; quick {QUICK['sweep']})")
    p.add_argument("--seeds", help=f"training seeds (default: {FULL['seeds']}; quick {QUICK['seeds']})")
    p.add_argument("--steps", type=int, help=f"steps per run (default: {FULL['steps']}; quick "
                                            f"{QUICK['steps']})")
    p.add_argument("--model", default=train.Config.model, help="the sweep's reference model (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in the sweep (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("pairs", "prompts", "samples", "steps", "batch_size", "max_new_tokens", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if not args.temperature > 0:
        raise UsageError(f"--temperature: expected a positive number, got {args.temperature}")
    if args.pareto:
        args.data, args.out = args.data or train.Config.data, args.out or "out/pareto"
    elif not args.checkpoint:
        raise UsageError("expected --checkpoint DIR (one policy) or --pareto (the sweep)")
    else:
        args.pairs, args.prompts, args.samples = args.pairs or 512, args.prompts or 64, args.samples or 4
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_pareto(args) if args.pareto else evaluate_checkpoint(args)


if __name__ == "__main__":
    try:
        main()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
