"""Multi-objective DPO with RACO (or a baseline) on a Hugging Face causal LM: the plain training loop.

    python train.py                                   # RACO on the embedded world, ~15 s on a 2-core CPU
    python train.py --method lw --weights 0.8,0.2     # DPO-LW, another trade-off
    python train.py --model Qwen/Qwen3-0.6B --data PKU-Alignment/PKU-SafeRLHF --device cuda --dtype bfloat16
    torchrun --nproc_per_node 8 train.py ...          # multi-GPU: one process per GPU, no other change

Each optimizer step: for every micro-batch, one forward pass of the policy (and of the frozen reference) over both
responses of every pair gives one log-ratio margin per pair; each objective's DPO loss uses its own labels on that
margin; raco.MultiObjectiveBackward turns the m losses into one direction in .grad; AdamW steps on it.
"""

import argparse
import copy
import dataclasses
import inspect
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.distributed as dist

import dpo
import world
from cagrad import METHODS
from policy import ModelError, add_lora, evaluate_samples, load_model, pick_device
from preference_data import DataError, load_pairs
from raco import MultiObjectiveBackward

TRAIN_METHODS = METHODS + ("amopo",)  # AMoPO changes the loss, not the combination: its losses are weighted (lw)


@dataclasses.dataclass
class Config:
    """Every flag of train.py; the defaults are the small embedded run."""
    method: str = "raco"          # raco | cagrad | lw | mgda | pcgrad | amopo
    weights: str = "0.5,0.5"      # user weights, one per objective (normalised to sum to 1)
    c: float = 0.4                # CAGrad radius for raco and cagrad, in [0, 1)
    beta: float = 0.1             # DPO temperature
    lr: float = 5e-4              # peak learning rate of AdamW
    steps: int = 200              # optimizer steps
    batch_size: int = 16          # pairs per micro-batch (per process)
    grad_accum: int = 1           # micro-batches per optimizer step
    solve_per: str = "step"       # step | micro_batch: where the dual is solved under accumulation (see raco.py)
    objectives: str = "quality,conciseness"  # which of the data's objectives, in order ("" = all)
    model: str = "models/world-tiny"         # local directory or hub id
    data: str = "data/world_train.jsonl"     # .jsonl / .json / .parquet file, local dataset dir or hub id
    data_format: str = "auto"     # auto | signed | pku | moa
    split: str = "train"          # split, for datasets loaded through `datasets`
    max_length: int = 256         # prompt + response tokens
    max_prompt_length: int = 192  # prompt tokens kept (from the end) when a pair is too long
    warmup: float = 0.1           # fraction of steps of linear warm-up before the cosine decay
    weight_decay: float = 0.0     # AdamW's decoupled weight decay
    max_grad_norm: float = 1.0    # clip the combined direction's norm (0 = off); rescales d, never turns it
    seed: int = 42                # data order and sampling
    device: str = "auto"          # auto | cpu | cuda
    dtype: str = "float32"        # float32 | bfloat16 (bf16 autocast over float32 weights; no fp16 loss scaling)
    gradient_checkpointing: bool = False  # non-reentrant: autograd.grad is called once per objective
    lora_r: int = 0               # LoRA rank on every linear layer (0 = full fine-tuning); needs peft
    lora_alpha: int = 16          # LoRA scaling numerator (the update is scaled by alpha / r)
    eval_prompts: int = 128       # held-out world prompts sampled before/after training (0 = skip)
    log_every: int = 5            # steps averaged into each line of metrics.jsonl
    out: str = "out/train"        # output directory: policy/, metrics.jsonl, summary.json


class UsageError(ValueError):
    """A bad flag: reported as one line, exit code 2."""


# Every error that is the user's input rather than a bug: a flag, a data file, a model directory. The command lines
# of train.py, eval.py and pareto.py print it as one line and exit 2, without a traceback.
INPUT_ERRORS = (UsageError, DataError, ModelError)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage block as well: bad input is one line here
        raise UsageError(message)


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The comment after each Config field is its --help text: one place documents both.
    comments = dict(line.split(":", 1)[0].split() + [line.split("#", 1)[1].strip()]
                    for line in inspect.getsource(Config).splitlines() if ": " in line and "  # " in line)
    for field in dataclasses.fields(Config):
        flag, help_text = "--" + field.name.replace("_", "-"), comments.get(field.name, " ")
        if field.type == "bool" or field.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default, help=help_text)
    return Config(**vars(parser.parse_args(argv)))


def parse_weights(text, num_objectives):
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights: expected comma-separated numbers, got {text!r}") from None
    if len(weights) != num_objectives:
        raise UsageError(f"--weights: got {len(weights)} weights for {num_objectives} objectives")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise UsageError(f"--weights: expected non-negative weights with a positive sum, got {text!r}")
    return [w / sum(weights) for w in weights]


def check_config(cfg):
    if cfg.method not in TRAIN_METHODS:
        raise UsageError(f"--method: unknown method {cfg.method!r}; expected one of {', '.join(TRAIN_METHODS)}")
    if not 0.0 <= cfg.c < 1.0:
        raise UsageError(f"--c: expected a value in [0, 1), got {cfg.c}")
    checks = [("beta", cfg.beta > 0), ("lr", cfg.lr > 0), ("steps", cfg.steps > 0), ("batch-size", cfg.batch_size > 0),
              ("grad-accum", cfg.grad_accum > 0), ("lora-r", cfg.lora_r >= 0),
              ("max-prompt-length", 0 < cfg.max_prompt_length < cfg.max_length),
              ("warmup", 0 <= cfg.warmup < 1), ("solve-per", cfg.solve_per in ("step", "micro_batch")),
              ("dtype", cfg.dtype in ("float32", "bfloat16"))]
    for name, ok in checks:
        if not ok:
            raise UsageError(f"--{name}: invalid value {getattr(cfg, name.replace('-', '_'))!r} (see --help)")
    pick_device(cfg.device)  # a bad or unavailable --device fails here, before anything is loaded


def batches(pairs, batch_size, seed, rank=0, world_size=1):
    """Endless micro-batches of pairs: a fresh shuffle each epoch, each process taking its own slice."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        order = order[rank::world_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [pairs[i] for i in order[start:start + batch_size]]


def objective_losses(policy, reference, tokenizer, batch, cfg, device, names):
    """The m per-objective losses of one micro-batch (sharing one graph) and its DPO metrics."""
    signs = torch.tensor([p.signs for p in batch], dtype=torch.float32, device=device)
    logps = lambda model: dpo.pair_logps(model, tokenizer, batch, cfg.max_length, cfg.max_prompt_length, device,
                                         cfg.dtype == "bfloat16")
    policy_a, policy_b, length_a, length_b = logps(policy)
    with torch.no_grad(), policy.disable_adapter() if reference is None else nullcontext():
        ref_a, ref_b, _, _ = logps(reference or policy)
    if cfg.method == "amopo":  # reference-free, length-normalised margin (SPEC section 5)
        margin = dpo.amopo_margin(policy_a, policy_b, length_a, length_b)
    else:
        margin = dpo.log_ratio_margin(policy_a, policy_b, ref_a, ref_b)
    losses = dpo.dpo_losses(margin, signs, cfg.beta)
    metrics = dpo.dpo_metrics(policy_a, policy_b, ref_a, ref_b, signs, cfg.beta, names)
    metrics.update({f"{name}/loss": losses[i].item() for i, name in enumerate(names)})
    return losses, metrics


def world_evaluation(model, tokenizer, cfg, weights, names, pairs):
    """Exact scores of fresh samples on held-out world prompts (None when the data is not the world's)."""
    if cfg.eval_prompts <= 0 or not set(names) <= set(world.OBJECTIVES) or not world.is_world_prompt(pairs[0].prompt):
        return None
    scores, _ = evaluate_samples(model, tokenizer, world.eval_prompts(cfg.eval_prompts), world.score, seed=cfg.seed)
    scores["weighted"] = sum(w * scores[name] for w, name in zip(weights, names))
    return scores


def main(cfg):
    started = time.time()
    check_config(cfg)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # launched by torchrun: one process per device, gradients reduced explicitly in raco.py
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if torch.cuda.is_available() else "cpu")
    else:
        rank, world_size, device = 0, 1, pick_device(cfg.device)
    if device.index is not None:  # torchrun: pin this process to its own GPU
        torch.cuda.set_device(device)
    main_process = rank == 0
    torch.manual_seed(cfg.seed)

    tokenizer, policy = load_model(cfg.model, device)
    wanted = [x for x in cfg.objectives.split(",") if x] or None
    pairs, names = load_pairs(cfg.data, cfg.data_format, wanted, tokenizer, split=cfg.split)
    weights = parse_weights(cfg.weights, len(names))
    if len(pairs) < cfg.batch_size * world_size:
        raise UsageError(f"--data: {len(pairs)} pairs, fewer than one batch of {cfg.batch_size * world_size}")
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        # With LoRA the reference is the policy with its adapters switched off: no second copy of the model.
        policy, reference = add_lora(policy, cfg.lora_r, cfg.lora_alpha), None
    else:
        # The reference: a frozen copy of the initial policy. No float32 master weights needed: bf16 halves it.
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        if cfg.dtype == "bfloat16":
            reference.to(torch.bfloat16)
    policy.train()

    before = world_evaluation(policy, tokenizer, cfg, weights, names, pairs) if main_process else None
    from transformers import get_cosine_schedule_with_warmup
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup * cfg.steps), cfg.steps)
    backward = MultiObjectiveBackward(trainable, weights, "lw" if cfg.method == "amopo" else cfg.method, cfg.c,
                                      cfg.solve_per, names)
    stream = batches(pairs, cfg.batch_size, cfg.seed, rank, world_size)

    log = None
    if main_process:  # only now, with every input checked: a bad flag never leaves a half-written directory
        os.makedirs(cfg.out, exist_ok=True)
        log = open(os.path.join(cfg.out, "metrics.jsonl"), "w")
    from tqdm import tqdm
    progress = tqdm(range(1, cfg.steps + 1), disable=not main_process, desc=cfg.method, dynamic_ncols=True)
    window = {}
    for step in progress:
        step_metrics = {}
        for _ in range(cfg.grad_accum):
            batch = next(stream)  # Algorithm 1, line 1: sample a minibatch of pairs
            # line 2: the losses L_i (one forward pass serves every objective) and their gradients g_i (raco.py)
            losses, metrics = objective_losses(policy, reference, tokenizer, batch, cfg, device, names)
            backward.backward(losses)
            for k, v in metrics.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum
        step_metrics.update(backward.finish())  # lines 3-7: d = sum_i a_i g_i in .grad (cagrad.raco_direction)
        if cfg.max_grad_norm > 0:
            step_metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm).item()
        step_metrics["lr"] = scheduler.get_last_lr()[0]
        optimizer.step()  # line 8: theta <- theta - eta d, with AdamW's eta
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_metrics["loss/weighted"] = sum(w * step_metrics[f"{n}/loss"] for w, n in zip(weights, names))
        for k, v in step_metrics.items():
            window.setdefault(k, []).append(v)
        if main_process and (step % cfg.log_every == 0 or step == cfg.steps):
            logged = {k: sum(v) / len(v) for k, v in window.items()}
            log.write(json.dumps({"step": step, **logged}) + "\n")
            log.flush()
            progress.set_postfix({"loss": f"{logged['loss/weighted']:.3f}",
                                  **{f"acc/{n}": f"{logged.get(f'{n}/rewards/accuracies', float('nan')):.2f}"
                                     for n in names}})
            final, window = logged, {}

    if not main_process:
        dist.destroy_process_group()
        return None
    log.close()
    after = world_evaluation(policy, tokenizer, cfg, weights, names, pairs)
    policy_dir = os.path.join(cfg.out, "policy")
    if cfg.lora_r > 0:  # save a plain model (adapters merged in) that from_pretrained loads without peft
        policy = policy.merge_and_unload()
    policy.save_pretrained(policy_dir, safe_serialization=True)
    tokenizer.save_pretrained(policy_dir)
    summary = {"config": dataclasses.asdict(cfg), "objectives": names, "weights": weights, "final": final,
               "eval": {"reference": before, "policy": after}, "seconds": round(time.time() - started, 1)}
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if before is not None:
        print_table(before, after, names)
    print(f"{time.time() - started:.0f} s; policy in {policy_dir}, metrics in {cfg.out}/metrics.jsonl "
          f"and {cfg.out}/summary.json")
    if distributed:
        dist.destroy_process_group()
    return summary


def print_table(before, after, names):
    keys = list(names) + ["weighted", "well_formed", "words"]
    print(f"{'held-out samples':<18}" + "".join(f"{k:>13}" for k in keys))
    for label, scores in (("reference", before), ("trained policy", after)):
        print(f"{label:<18}" + "".join(f"{scores[k]:>13.3f}" for k in keys))


def run_command(main, *args):
    """Run a command line's main: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        return main(*args)
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_command(lambda: main(parse_args()))
