"""Multi-objective DPO with RACO (or a baseline) on a Hugging Face causal LM: the plain training loop.

    python train.py                                   # RACO on the embedded world, ~30 s on a 2-core CPU
    python train.py --method lw --weights 0.8,0.2     # DPO-LW, another trade-off
    python train.py --model Qwen/Qwen3-0.6B --data PKU-Alignment/PKU-SafeRLHF --device cuda --dtype bfloat16
    torchrun --nproc_per_node 8 train.py --fsdp ...   # multi-GPU, parameters sharded with FSDP2

Each optimizer step: for every micro-batch, one forward pass of the policy (and of the frozen reference, unless its
log-probs were precomputed) over both responses of every pair gives one log-ratio margin per pair; each objective's
DPO loss uses its own labels on that margin; raco.MultiObjectiveBackward turns the m losses into one direction in
.grad; AdamW steps on it. Checkpoints every --save-every steps; Ctrl-C saves one and stops; rerunning the same
command (or --resume) continues from the latest (checkpoint.py).
"""

import argparse
import copy
import dataclasses
import inspect
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.distributed as dist

import checkpoint
import dpo
import world
from cagrad import METHODS
from checkpoint import RunError
from command_line import SEED_LIMIT, OneLineParser, TrainingError, UsageError, check_flags, run_command
from policy import add_lora, eval_mode, load_model, load_tokenizer, pick_device, shard, transformer_blocks
from preference_data import DataError, first_line, load_pairs
from raco import MultiObjectiveBackward

TRAIN_METHODS = METHODS + ("amopo",)  # AMoPO changes the loss, not the combination: its losses are weighted (lw)


@dataclasses.dataclass
class Config:
    """Every flag of train.py; the defaults are the small embedded run."""
    method: str = "raco"          # raco | cagrad | lw | mgda | pcgrad | amopo
    weights: str = "0.8,0.2"      # user weights, one per objective (normalised); 0.8,0.2 is one of the paper's
    c: float = 0.4                # CAGrad radius for raco and cagrad, in [0, 1)
    beta: float = 0.1             # DPO temperature
    lr: float = 5e-4              # peak learning rate of AdamW
    steps: int = 200              # optimizer steps
    batch_size: int = 16          # pairs per micro-batch (per process)
    grad_accum: int = 1           # micro-batches per optimizer step
    solve_per: str = "step"       # step | micro_batch: where the dual is solved under accumulation (see raco.py)
    objectives: str = ""          # the data's objectives to use, in order ("": all; the world's: quality,conciseness)
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
    gradient_checkpointing: bool = False  # non-reentrant: the graph is walked once per objective
    lora_r: int = 0               # LoRA rank on every linear layer (0 = full fine-tuning); needs peft
    lora_alpha: int = 16          # LoRA scaling numerator (the update is scaled by alpha / r)
    fsdp: bool = False            # under torchrun: shard parameters, gradients and AdamW's state (FSDP2)
    precompute_ref: bool = False  # the reference's log-probs of every pair once, cached in --out; frees the reference
    gram_layers: int = 0          # > 0: the Gram matrix from the last K transformer blocks only (see raco.py)
    eval_prompts: int = 128       # held-out world prompts sampled before/after training (0 = skip)
    log_every: int = 5            # steps averaged into each line of metrics.jsonl
    save_every: int = 100         # steps between checkpoints in --out/checkpoints (0 = none)
    keep_checkpoints: int = 2     # how many of the latest checkpoints to keep
    resume: bool = False          # continue the run in --out from its latest checkpoint
    overwrite: bool = False       # replace another run's files in --out
    max_bad_steps: int = 10       # stop after this many consecutive steps with non-finite losses or gradients
    out: str = "out/train"        # output directory: metrics.jsonl, checkpoints/, policy/, summary.json


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


def parse_weights(text, num_objectives=None):
    """--weights as a list on the simplex (checked up front without num_objectives, then against the data's)."""
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights: expected comma-separated numbers, got {text!r}") from None
    if any(w < 0 or not math.isfinite(w) for w in weights) or max(weights) <= 0:
        raise UsageError(f"--weights: expected finite non-negative weights with a positive sum, got {text!r}")
    if num_objectives is not None and len(weights) != num_objectives:
        raise UsageError(f"--weights: got {len(weights)} weights for {num_objectives} objectives")
    weights = [w / max(weights) for w in weights]  # to at most 1 first: 1e308 + 1e308 would overflow
    return [w / sum(weights) for w in weights]


def check_config(cfg):
    """Every flag that can be checked without loading anything."""
    if cfg.method not in TRAIN_METHODS:
        raise UsageError(f"--method: unknown method {cfg.method!r}; expected one of {', '.join(TRAIN_METHODS)}")
    if not 0.0 <= cfg.c < 1.0:
        raise UsageError(f"--c: expected a value in [0, 1), got {cfg.c}")
    parse_weights(cfg.weights)
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    check_flags(cfg, [("beta", 0 < cfg.beta < math.inf), ("lr", 0 < cfg.lr < math.inf), ("steps", cfg.steps > 0),
                      ("batch_size", cfg.batch_size > 0), ("grad_accum", cfg.grad_accum > 0),
                      ("lora_r", cfg.lora_r >= 0), ("max_prompt_length", 0 < cfg.max_prompt_length < cfg.max_length),
                      ("warmup", 0 <= cfg.warmup < 1), ("weight_decay", 0 <= cfg.weight_decay < math.inf),
                      ("max_grad_norm", 0 <= cfg.max_grad_norm < math.inf), ("eval_prompts", cfg.eval_prompts >= 0),
                      ("log_every", cfg.log_every > 0), ("save_every", cfg.save_every >= 0),
                      ("keep_checkpoints", cfg.keep_checkpoints > 0), ("max_bad_steps", cfg.max_bad_steps > 0),
                      ("solve_per", cfg.solve_per in ("step", "micro_batch")), ("gram_layers", cfg.gram_layers >= 0),
                      ("dtype", cfg.dtype in ("float32", "bfloat16")), ("seed", 0 <= cfg.seed < SEED_LIMIT)])
    if cfg.fsdp and not torchrun:
        raise UsageError("--fsdp: invalid value True (launch with torchrun)")
    if cfg.fsdp and (cfg.lora_r > 0 or cfg.gram_layers > 0):
        raise UsageError("--fsdp: not with --lora-r or --gram-layers (LoRA's adapters need no sharding)")
    if cfg.gram_layers > 0 and cfg.grad_accum > 1 and cfg.solve_per == "step":
        raise UsageError("--gram-layers: solves per micro-batch; with --grad-accum > 1 pass --solve-per micro_batch")
    pick_device(cfg.device)  # a bad or unavailable --device fails here, before anything is loaded


def load_training_pairs(cfg, tokenizer, main_process):
    """The pairs and objective names; the world's default objectives are quality and conciseness. Fails on what
    would break later (an empty prompt that a tokenizer without BOS leaves with nothing to predict from) and warns
    about what teaches nothing (identical responses, an objective whose labels are all ties)."""
    wanted = [x for x in cfg.objectives.split(",") if x] or None
    pairs, names = load_pairs(cfg.data, cfg.data_format, wanted, tokenizer, split=cfg.split)
    if wanted is None and tuple(names) == world.OBJECTIVES and world.is_world_prompt(pairs[0].prompt):
        pairs, names = [dataclasses.replace(p, signs=p.signs[:2]) for p in pairs], list(world.OBJECTIVES[:2])
    for pair, ids in zip(pairs, dpo.prompt_ids(tokenizer, [p.prompt for p in pairs])):
        if not ids:
            raise DataError(f"{pair.where}: empty prompt, and the tokenizer adds no BOS: the first response token "
                            "would have nothing to be predicted from")
    identical = [p.where for p in pairs if p.response_a == p.response_b]
    if identical and main_process:
        print(f"warning: {len(identical)} of {len(pairs)} pairs have identical responses and teach nothing "
              f"(first: {identical[0]})", file=sys.stderr)
    for i, name in enumerate(names):
        if main_process and all(p.signs[i] == 0 for p in pairs):
            print(f"warning: objective {name!r} is a tie on every pair: its loss is constant and its gradient zero",
                  file=sys.stderr)
    return pairs, names


def batches(num_pairs, batch_size, seed, rank=0, world_size=1):
    """Endless micro-batches of pair indices: a fresh shuffle each epoch, each process taking its own slice."""
    rng = random.Random(seed)
    while True:
        order = list(range(num_pairs))
        rng.shuffle(order)
        order = order[rank::world_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def pair_logps(model, tokenizer, pairs, cfg, device):
    return dpo.pair_logps(model, tokenizer, pairs, cfg.max_length, cfg.max_prompt_length, device,
                          cfg.dtype == "bfloat16")


def reference_cache(cfg, reference, tokenizer, pairs, device, rank, world_size):
    """--precompute-ref: the reference's log-probs of every pair (2, N), from the run's cache when it matches,
    else computed once (dpo.reference_logps) and cached for a resumed or repeated run. The reference is the
    initial policy (with --dtype bfloat16: its float32 weights under autocast, where the per-step reference is a
    bf16 copy, so the two agree to bf16 rounding)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file
    settings = [cfg.max_length, cfg.max_prompt_length, cfg.dtype, getattr(reference.config, "_commit_hash", None)]
    path = checkpoint.reference_cache_path(cfg.out, cfg.model, pairs, settings)
    if os.path.exists(path):
        try:
            logps = load_file(path)["logps"]
            if logps.shape == (2, len(pairs)) and logps.dtype == torch.float32 and bool(torch.isfinite(logps).all()):
                return logps.to(device)
        except (OSError, KeyError, SafetensorError):
            pass
        if rank == 0:
            print(f"warning: {path} is damaged; computing the reference's log-probs again", file=sys.stderr)
    logps = dpo.reference_logps(reference, tokenizer, pairs, cfg.batch_size, cfg.max_length, cfg.max_prompt_length,
                                device, cfg.dtype == "bfloat16", rank, world_size)
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        save_file({"logps": logps.cpu()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return logps


def objective_losses(policy, reference, tokenizer, batch, cfg, device, names):
    """The m per-objective losses of one micro-batch (sharing one graph) and its DPO metrics. batch: pairs, or
    (pairs, precomputed reference log-probs (2, B))."""
    pairs, cached = batch if isinstance(batch, tuple) else (batch, None)
    signs = torch.tensor([p.signs for p in pairs], dtype=torch.float32, device=device)
    policy_a, policy_b, length_a, length_b = pair_logps(policy, tokenizer, pairs, cfg, device)
    if cached is not None:
        ref_a, ref_b = cached
    else:  # AMoPO's loss needs none, but its logged DPO metrics (implicit rewards) compare with the others' only so
        with torch.no_grad(), policy.disable_adapter() if reference is None else nullcontext():
            ref_a, ref_b, _, _ = pair_logps(reference or policy, tokenizer, pairs, cfg, device)
    if cfg.method == "amopo":  # reference-free, length-normalised margin (SPEC section 5)
        margin = dpo.amopo_margin(policy_a, policy_b, length_a, length_b)
    else:
        margin = dpo.log_ratio_margin(policy_a, policy_b, ref_a, ref_b)
    losses = dpo.dpo_losses(margin, signs, cfg.beta)
    metrics = dpo.dpo_metrics(policy_a, policy_b, ref_a, ref_b, signs, cfg.beta, names)
    metrics.update({f"{name}/loss": losses[i].item() for i, name in enumerate(names)})
    return losses, metrics


def world_evaluation(model, tokenizer, cfg, weights, names, pairs, reference=None):
    """world.evaluate on --eval-prompts held-out prompts, when the data is the world's (else None)."""
    if cfg.eval_prompts <= 0 or not set(names) <= set(world.OBJECTIVES) or not world.is_world_prompt(pairs[0].prompt):
        return None
    return world.evaluate(model, tokenizer, names, weights, cfg.eval_prompts, cfg.seed, reference)


def mean_over_processes(logged):
    """Under torchrun each process saw its own micro-batches: log the mean over processes of every key it has."""
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, logged)
    keys = dict.fromkeys(k for d in every for k in d)
    return {k: sum(d[k] for d in every if k in d) / sum(k in d for d in every) for k in keys}


def main(cfg):
    started = time.time()
    check_config(cfg)
    resume_from = checkpoint.open_run(dataclasses.asdict(cfg), cfg.resume, cfg.overwrite)
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

    tokenizer = load_tokenizer(cfg.model)  # the data is checked before the weights load
    pairs, names = load_training_pairs(cfg, tokenizer, main_process)
    weights = parse_weights(cfg.weights, len(names))
    if len(pairs) < cfg.batch_size * world_size:
        raise UsageError(f"--data: {len(pairs)} pairs, fewer than one batch of {cfg.batch_size * world_size}")
    policy = load_model(cfg.model, device, tokenizer=tokenizer)[1]
    if cfg.gram_layers > len(transformer_blocks(policy)):
        raise UsageError(f"--gram-layers: {cfg.gram_layers}, but the model has {len(transformer_blocks(policy))} "
                         "transformer blocks")
    if cfg.gradient_checkpointing:  # transformers 5 renamed it; 4.x has only the old name
        enable = getattr(policy, "activation_checkpointing_enable", None) or policy.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    reference, cached = None, None
    if not cfg.precompute_ref and cfg.lora_r == 0:  # a frozen copy of the initial policy; bf16 halves it
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        reference = reference.to(torch.bfloat16) if cfg.dtype == "bfloat16" else reference
    if cfg.fsdp:
        policy, reference = shard(policy), reference and shard(reference)
    if cfg.precompute_ref:  # the policy is the reference until it trains: no copy, and no reference forward per step
        with eval_mode(policy):
            cached = reference_cache(cfg, policy, tokenizer, pairs, device, rank, world_size)
    if cfg.lora_r > 0:  # the reference is then the policy with its adapters switched off: no second copy either
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha)
    policy.train()

    from transformers import get_cosine_schedule_with_warmup
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup * cfg.steps), cfg.steps)
    gram_params = [p for b in transformer_blocks(policy)[-cfg.gram_layers:] for p in b.parameters()
                   if p.requires_grad] if cfg.gram_layers else None
    backward = MultiObjectiveBackward(trainable, weights, "lw" if cfg.method == "amopo" else cfg.method, cfg.c,
                                      cfg.solve_per, names, gram_params)
    stream = batches(len(pairs), cfg.batch_size, cfg.seed, rank, world_size)
    evaluate = main_process and not cfg.fsdp  # sampling a sharded model would need every process in step
    if resume_from:
        try:
            state = checkpoint.load_checkpoint(resume_from, policy, optimizer)
        except Exception as error:  # written atomically, so damaged afterwards: say which, not a reader's traceback
            raise RunError(f"--resume: {resume_from} cannot be read ({type(error).__name__}: {first_line(error)}); "
                           "delete it to resume from the one before, or pass --overwrite") from None
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        for _ in range(state["step"] * cfg.grad_accum):  # replay the data stream to where the checkpoint was
            next(stream)
        if main_process:
            print(f"resuming from {resume_from}", file=sys.stderr)
    else:
        state = dict(step=0, window={}, final={}, bad_steps=0, skipped=0,
                     before=world_evaluation(policy, tokenizer, cfg, weights, names, pairs) if evaluate else None)
    try:
        with checkpoint.running(dataclasses.asdict(cfg), resume_from is not None):
            train_steps(cfg, state, policy, reference, tokenizer, pairs, cached, names, weights, optimizer, scheduler,
                        backward, stream, device, distributed, main_process, resume_from)
            after = world_evaluation(policy, tokenizer, cfg, weights, names, pairs,
                                     reference or load_model(cfg.model, device)[1]) if evaluate else None
            policy_dir = os.path.join(cfg.out, "policy")
            checkpoint.save_policy(policy, tokenizer, policy_dir, "merge" if cfg.lora_r > 0 else None)
            summary = {"config": dataclasses.asdict(cfg), "objectives": names, "weights": weights,
                       "final": state["final"], "skipped_steps": state["skipped"], "resumed_from": resume_from,
                       "eval": {"reference": state["before"], "policy": after},
                       "seconds": round(time.time() - started, 1)}
            if main_process:
                checkpoint.write_json(os.path.join(cfg.out, "summary.json"), summary)
    except OSError as error:  # a full disk, a lost mount: one line, and the last complete checkpoint stays
        raise TrainingError(f"could not write to {cfg.out}: {error.strerror or error}") from None
    if distributed:
        dist.destroy_process_group()
    if not main_process:
        return None
    if state["before"] is not None:
        world.print_comparison(state["before"], after, names)
    if state["skipped"]:  # fewer than --max-bad-steps in a row, or the run would have stopped: but never silent
        ending = f", the last {state['bad_steps']} in a row: the policy has likely diverged (is --lr {cfg.lr:g} too " \
                 "high?)" if state["bad_steps"] else ""
        print(f"warning: {state['skipped']} of {cfg.steps} steps were skipped for non-finite losses or gradients"
              f"{ending}; see skipped_steps in metrics.jsonl", file=sys.stderr)
    print(f"{time.time() - started:.0f} s; policy in {policy_dir}, metrics in {cfg.out}/metrics.jsonl "
          f"and {cfg.out}/summary.json")
    return summary


def step_of_line(line):
    """The step of a metrics.jsonl line; a line cut short by a kill belongs to no step that was saved."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def train_steps(cfg, state, policy, reference, tokenizer, pairs, cached, names, weights, optimizer, scheduler,
                backward, stream, device, distributed, main_process, saved):
    """The loop, from state["step"] to cfg.steps: updates state, logs, checkpoints, and stops cleanly on a signal
    or on divergence."""
    from tqdm import tqdm
    log = None
    if main_process:  # on resume, the lines the interrupted run wrote after its checkpoint are written again
        path = os.path.join(cfg.out, "metrics.jsonl")
        kept = [line for line in open(path) if step_of_line(line) <= state["step"]] if os.path.exists(path) else []
        log = open(path, "w")
        log.writelines(kept)
    progress = tqdm(range(state["step"] + 1, cfg.steps + 1), disable=not main_process, desc=cfg.method,
                    dynamic_ncols=True, initial=state["step"], total=cfg.steps)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    interrupts = checkpoint.Interrupts()
    try:
        for step in progress:
            logged_step = step % cfg.log_every == 0 or step == cfg.steps
            step_metrics, finite = {}, True
            for _ in range(cfg.grad_accum):
                indices = next(stream)  # Algorithm 1, line 1: sample a minibatch of pairs
                batch = [pairs[i] for i in indices]
                batch = batch if cached is None else (batch, cached[:, indices])
                # line 2: the losses L_i (one forward pass serves every objective) and their gradients g_i (raco.py)
                losses, metrics = objective_losses(policy, reference, tokenizer, batch, cfg, device, names)
                finite = finite and bool(torch.isfinite(losses).all())
                backward.backward(losses, diagnostics=logged_step)
                for k, v in metrics.items():
                    step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum
            step_metrics.update(backward.finish())  # lines 3-7: d = sum_i a_i g_i in .grad (cagrad.raco_direction)
            norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf))
            if distributed:  # the losses differ by process (the direction does not): stop or go together
                flag = torch.tensor([float(finite)])
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = bool(flag)
            if finite and math.isfinite(norm):
                optimizer.step()  # line 8: theta <- theta - eta d, with AdamW's eta
                state["bad_steps"] = 0
                step_metrics.update(grad_norm=norm, lr=scheduler.get_last_lr()[0])
                step_metrics["loss/weighted"] = sum(w * step_metrics[f"{n}/loss"] for w, n in zip(weights, names))
                for k, v in step_metrics.items():
                    state["window"].setdefault(k, []).append(v)
            else:  # non-finite losses or direction: no update; counted; the run stops if it keeps happening
                state["bad_steps"] += 1
                state["skipped"] += 1
                state["window"].setdefault("skipped_steps", []).append(1.0)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step
            if logged_step:
                logged = {k: sum(v) / len(v) for k, v in state["window"].items()}
                state["final"], state["window"] = mean_over_processes(logged) if distributed else logged, {}
                if main_process:
                    log.write(json.dumps({"step": step, **state["final"]}) + "\n")
                    log.flush()
                    shown = state["final"]
                    progress.set_postfix({"loss": f"{shown.get('loss/weighted', math.nan):.3f}",
                                          **{f"acc/{n}": f"{shown.get(f'{n}/rewards/accuracies', math.nan):.2f}"
                                             for n in names}})
            if state["bad_steps"] >= cfg.max_bad_steps:
                raise TrainingError(
                    f"stopped at step {step}: {state['bad_steps']} consecutive steps had non-finite losses or "
                    f"gradients, so the parameters have diverged (is --lr {cfg.lr:g} too high?); "
                    + (f"the last checkpoint, {saved}, is intact" if saved else "no checkpoint was saved"))
            signum = interrupts.requested(distributed)
            due = cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps) and not state["bad_steps"]
            if signum or due:  # never a periodic checkpoint of parameters that just failed a step
                saved = checkpoint.save_checkpoint(cfg.out, step, policy, tokenizer, optimizer,
                                                   dict(state, scheduler=scheduler.state_dict(),
                                                        rng=checkpoint.rng_state()),
                                                   cfg.keep_checkpoints, cfg.lora_r > 0)
            if signum:
                progress.close()
                if main_process:
                    print(f"{signal.Signals(signum).name} at step {step}: checkpoint saved in {saved}; run the "
                          "same command again (or add --resume) to continue", file=sys.stderr)
                raise SystemExit(128 + signum)
    finally:
        progress.close()
        interrupts.restore()
        if log is not None:
            log.close()


if __name__ == "__main__":
    config = run_command(parse_args)
    run_command(main, config, interrupted=lambda: checkpoint.left_behind(dataclasses.asdict(config)))
