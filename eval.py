"""Evaluate one trained policy against its reference.

    python eval.py --checkpoint out/train          # one policy vs its reference: held-out pairs, samples, KL
    python eval.py --checkpoint out/train --sample "facts: the cat is happy . the dog is slow . summary:"
                                                   # the policy's responses to your prompts (repeat it; - reads stdin)
    python eval.py --checkpoint out/pku --data PKU-Alignment/PKU-SafeRLHF --split test \
        --reward-models helpful=PATH_OR_ID,harmless=PATH_OR_ID      # real data: reward models score the samples

For a policy pi and its reference pi_ref:
- held-out pairs: per objective, the implicit-reward accuracy and margin, r(y) = beta (log pi(y|x) - log pi_ref(y|x))
  (dpo.py). It needs no judge, so it works on any data set.
- sampled responses (temperature 0.6, as in the paper): each objective's score -- exact on the embedded world,
  a reward model's scalar logit on real data -- the well-formed rate, the length, and KL(pi || pi_ref).
Standard errors treat *prompts* as the independent units (a prompt's samples are averaged first).
The Pareto sweep over methods, weights and seeds, which evaluates every run this way, is experiments/pareto.py.
"""
import dataclasses
import functools
import json
import math
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tqdm import tqdm

import dpo
import train
import world
from harness.batches import pair_logps
from harness.checks import check_config
from harness.command_line import (THREADS_HELP, OneLineParser, check_flags, check_positive, check_sampling,
                                  run_command, use_threads)
from harness.errors import UsageError
from harness.metrics import mean_se
from harness.models import check_model_path, eval_mode, load_model, load_tokenizer, pick_device
from harness.preference_data import load_pairs
from harness.run_directory import check_writable, write_json
from harness.sampling import Sampling, evaluate_samples, sample


def parse_reward_models(spec, taken=()):
    """'name=PATH_OR_ID,...' -> {name: path}, each local path checked for a model's files; names must be new."""
    paths = {}
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        name, _, path = (x.strip() for x in item.partition("="))
        if not name or not path:
            raise UsageError(f"--reward-models: expected name=PATH_OR_ID[,name=PATH_OR_ID...], got {item!r}")
        if name in paths or name in taken or name.endswith("_se"):
            raise UsageError(f"--reward-models: the name {name!r} is taken (by another reward model or a score the "
                             f"samples already have: {', '.join(sorted(taken))}); pick another")
        check_model_path(path, "--reward-models")
        paths[name] = path
    return paths


def load_reward_models(paths, device):
    """{name: path} -> {name: (tokenizer, model)}: sequence classifiers whose one output is the reward."""
    from transformers import AutoModelForSequenceClassification
    models = {}
    for name, path in paths.items():
        tokenizer, model = load_model(path, device, "--reward-models", head=AutoModelForSequenceClassification)
        if model.config.num_labels != 1:
            raise UsageError(f"--reward-models: {path!r} has {model.config.num_labels} outputs; a reward model has 1")
        model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last token that is not padding
        models[name] = (tokenizer, model.eval())
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


@torch.no_grad()
def pair_metrics(policy, reference, tokenizer, pairs, names, cfg, device, batch_size=32):
    """Per objective, over all held-out pairs (ties left out): the implicit-reward accuracy and margin, with errors.
    cfg: the train.Config the policy was trained with (beta, max_length, max_prompt_length, dtype)."""
    logps = []
    with eval_mode(policy, reference):
        for start in tqdm(range(0, len(pairs), batch_size), desc="pairs", leave=False, dynamic_ncols=True):
            batch = pairs[start:start + batch_size]
            logps.append([x.float().cpu() for model in (policy, reference)
                          for x in pair_logps(model, tokenizer, batch, cfg.max_length, cfg.max_prompt_length, device,
                                                   cfg.dtype == "bfloat16")])
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


def check_same_tokens(tokenizer, reference_tokenizer, pairs, reference, sample=64):
    """The policy's log-ratio to its reference compares log-probs of the same token ids: a reference whose tokenizer
    maps the held-out texts to other ids (even with a vocabulary of the same size) is not the model the policy came
    from, and every margin and KL against it would be meaningless."""
    texts = [t for p in pairs[:sample] for t in (p.prompt, p.response_a, p.response_b)]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if reference_tokenizer(text, add_special_tokens=True)["input_ids"] != ids:
            raise UsageError(f"--reference: {reference} tokenizes the held-out text {text[:40]!r} into other ids than "
                             "the policy's tokenizer does: it is not the model the policy came from")
    if reference_tokenizer.eos_token_id != tokenizer.eos_token_id:
        raise UsageError(f"--reference: {reference} ends responses with token {reference_tokenizer.eos_token_id}, "
                         f"the policy with {tokenizer.eos_token_id}: it is not the model the policy came from")


def read_summary(run):
    """A finished train.py run's summary.json, checked for what evaluation reads from it."""
    path = os.path.join(run, "summary.json")
    if not (os.path.isfile(path) and os.path.isdir(os.path.join(run, "policy"))):
        raise UsageError(f"--checkpoint: {run}: expected a finished train.py output with summary.json and policy/")
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"--checkpoint: {path}: not readable JSON ({error})") from None
    expected = {"config": dict, "objectives": list, "weights": list}
    for key, kind in expected.items():
        if not isinstance(summary, dict) or not isinstance(summary.get(key), kind):
            raise UsageError(f"--checkpoint: {path}: expected a '{key}' {kind.__name__}, as train.py writes it")
    if not all(isinstance(n, str) for n in summary["objectives"]) or len(summary["weights"]) != len(
            summary["objectives"]) or not isinstance(summary["config"].get("data"), str):
        raise UsageError(f"--checkpoint: {path}: objectives, weights or config.data not as train.py writes them")
    fields = {f.name: f for f in dataclasses.fields(train.Config)}
    for key, value in summary["config"].items():
        kind = type(fields[key].default) if key in fields else None
        if kind is not None and not (type(value) is kind or kind is float and type(value) is int):
            raise UsageError(f"--checkpoint: {path}: config.{key}: expected {kind.__name__}, got {value!r}")
    summary["config"] = train.Config(**{k: v for k, v in summary["config"].items() if k in fields})
    try:  # the values too (the device it trained on need not be this machine's)
        check_config(dataclasses.replace(summary["config"], device="cpu", fsdp=False))
    except UsageError as error:
        raise UsageError(f"--checkpoint: {path}: config: {error}") from None
    return summary


def evaluate_checkpoint(args):
    summary = read_summary(args.checkpoint)
    out = os.path.join(args.checkpoint, "eval.json") if args.out is None else args.out
    if not out:
        raise UsageError("--out: empty; expected the path of a .json file")
    if os.path.isdir(out):
        raise UsageError(f"--out: {out} is a directory; expected the path of a .json file")
    inside = os.path.relpath(os.path.realpath(out), os.path.realpath(args.checkpoint))
    if inside in ("run.json", "summary.json", "metrics.jsonl") or inside.split(os.sep)[0] in ("policy", "checkpoints"):
        raise UsageError(f"--out: {out} is one of the run's own files; name another")
    check_writable(os.path.dirname(os.path.abspath(out)), "--out")  # now, not after the whole evaluation
    cfg, names, device = summary["config"], summary["objectives"], pick_device(args.device)
    use_threads(args.threads, device)
    # names alone are not enough: MOA summarisation data has the world's objective names
    on_world = set(names) <= set(world.OBJECTIVES) and world.held_out_path(cfg.data) is not None
    source = args.data or (world.held_out_path(cfg.data) if on_world else None)
    if source is None:
        raise UsageError(f"--data: the policy was trained on {cfg.data}; name its held-out pairs with --data")
    # the names the samples' scores already use: a reward model may not silently replace one
    taken = {"samples", "kl", *(world.SCORES if on_world else ["tokens"])}
    reward_paths = parse_reward_models(args.reward_models, taken)  # checked before anything loads
    tokenizer = load_tokenizer(os.path.join(args.checkpoint, "policy"), "--checkpoint")
    pairs, _ = load_pairs(source, args.data_format, names, tokenizer, args.split, args.pairs)  # before the weights
    reference_tokenizer = load_tokenizer(args.reference or cfg.model, "--reference")
    check_same_tokens(tokenizer, reference_tokenizer, pairs, args.reference or cfg.model)
    policy = load_model(os.path.join(args.checkpoint, "policy"), device, "--checkpoint", tokenizer=tokenizer)[1]
    reference = load_model(args.reference or cfg.model, device, "--reference", tokenizer=reference_tokenizer)[1]
    if reference.get_input_embeddings().num_embeddings != policy.get_input_embeddings().num_embeddings:
        raise UsageError(f"--reference: {args.reference or cfg.model} has a vocabulary of "
                         f"{reference.get_input_embeddings().num_embeddings} tokens, the policy one of "
                         f"{policy.get_input_embeddings().num_embeddings}: it is not the model the policy came from")
    reward_models = load_reward_models(reward_paths, device)
    result = {"checkpoint": args.checkpoint, "method": cfg.method, "weights": summary["weights"],
              "reference": args.reference or cfg.model, "data": source, "objectives": names,
              "pairs": pair_metrics(policy, reference, tokenizer, pairs, names, cfg, device, args.batch_size)}
    if on_world or reward_models:
        prompts = world.eval_prompts(args.prompts) if on_world else \
            list(dict.fromkeys(p.prompt for p in pairs))[:args.prompts]
        result["samples"] = {"prompts": len(prompts), "per_prompt": args.samples, "temperature": args.temperature}
        rewards = {name: functools.partial(reward_scores, model, rm_tokenizer, batch_size=args.batch_size)
                   for name, (rm_tokenizer, model) in reward_models.items()}
        how = Sampling(args.samples, args.temperature, args.max_new_tokens, args.seed, args.batch_size,
                       cfg.max_prompt_length)
        for label, model in (("reference", reference), ("policy", policy)):
            result["samples"][label], result["samples"][label + "_examples"] = evaluate_samples(
                model, tokenizer, prompts, how, world.score if on_world else None, rewards, reference)
    write_json(out, result)
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


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a train.py output directory (summary.json, policy/)")
    p.add_argument("--reference", help="reference model (default: the checkpoint's recorded --model)")
    p.add_argument("--data", help="held-out pairs (default: world_eval.jsonl for the world, else required)")
    p.add_argument("--data-format", default="auto", help="auto | signed | pku | moa (default: %(default)s)")
    p.add_argument("--split", default="test", help="split of a hub or directory data set (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=512, help="held-out pairs at most (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=128, help="held-out prompts to sample, as many as train.py's "
                                                               "--eval-prompts (default: %(default)s)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: %(default)s, "
                                                                   "the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per sample at most (default: %(default)s)")
    p.add_argument("--reward-models", default="", help="name=PATH_OR_ID,...: a sequence classifier per objective")
    p.add_argument("--batch-size", type=int, default=32, help="pairs or prompts per forward or generate call "
                                                              "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP + " (default: %(default)s)")
    p.add_argument("--out", help="eval.json path (default: in the checkpoint)")
    p.add_argument("--sample", action="append", metavar="PROMPT", help="only print the policy's responses to PROMPT "
                   "(--samples of them, at --temperature); repeat it for more prompts; - reads prompts from stdin")
    args = p.parse_args(argv)
    check_positive(args, ("pairs", "prompts", "samples", "batch_size", "max_new_tokens"))
    check_sampling(args.temperature, [args.seed])
    check_flags(args, [("threads", args.threads >= 0)])
    return args


def sample_prompts(args):
    """--sample: the policy's responses to the given prompts, --samples of each, printed; nothing else is done."""
    prompts = [line.rstrip("\n") for text in args.sample
               for line in (sys.stdin if text == "-" else [text]) if line.strip()]
    if not prompts:
        raise UsageError("--sample: no prompt given")
    policy_dir = os.path.join(args.checkpoint, "policy")
    if not os.path.isdir(policy_dir):
        raise UsageError(f"--checkpoint: {args.checkpoint}: no policy/ to sample (is the run finished?)")
    device = pick_device(args.device)
    use_threads(args.threads, device)
    tokenizer, policy = load_model(policy_dir, device, "--checkpoint")
    texts, _ = sample(policy, tokenizer, prompts,
                      Sampling(args.samples, args.temperature, args.max_new_tokens, args.seed, args.batch_size))
    for prompt, responses in zip(prompts, texts):
        print(prompt)
        for response in responses:
            print(f"  {response}")
    return texts


def main(argv=None):
    args = parse_args(argv)
    return sample_prompts(args) if args.sample else evaluate_checkpoint(args)


if __name__ == "__main__":
    run_command(main)
