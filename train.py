"""Multi-objective DPO with RACO (or a baseline) on a Hugging Face causal LM: the training loop, top to bottom.

    python train.py                                   # RACO on the embedded world, ~30 s on a 2-core CPU
    python train.py --method lw --weights 0.8,0.2     # DPO-LW, another trade-off
    python train.py --config out/train/run.json       # an earlier run's flags (JSON or YAML); flags beside override
    python train.py --model Qwen/Qwen3-0.6B --data PKU-Alignment/PKU-SafeRLHF --device cuda --dtype bfloat16
    torchrun --nproc_per_node 8 train.py --fsdp ...   # multi-GPU, parameters sharded with FSDP2

One optimizer step is Algorithm 1 of the paper (arXiv 2602.02495; docs/method.md derives it):
  1.   a minibatch of preference pairs, every pair shared by the m objectives, with one label per objective;
  2.   one forward pass of the policy (and of the frozen reference) over both responses of every pair gives one
       log-ratio margin per pair; objective i's DPO loss L_i reads it with its own labels (dpo.py); one backward
       pass per objective gives the gradients g_i (raco.py);
  3-7. their Gram matrix H = G G^T gives the coefficients a of the direction d = sum_i a_i g_i (cagrad.py), which
       is written into .grad;
  8.   AdamW steps on d.
What makes a run real lives in harness/ and enters through the calls on `run` and a few named helpers: flags
checked before anything loads, the run directory, checkpoints and exact resume, Ctrl-C, torchrun and FSDP2, the
reference's forms (a copy, LoRA, a cache), the per-micro-batch and subset-Gram variants.
"""

import dataclasses
import math
import os
from dataclasses import field

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import dpo
import world
from harness.batches import autocast, batches, collate
from harness.checks import TRAIN_METHODS, check_model, load_training_pairs
from harness.command_line import THREADS_HELP, parse_config, run_command
from harness.models import load_model, load_tokenizer
from harness.reference import policy_and_reference
from harness.run import Run
from harness.run_directory import left_behind
from harness.sampling import score_on_world
from harness.scale import multi_objective_backward


@dataclasses.dataclass
class Config:
    """Every flag of train.py; the defaults are the small embedded run."""
    method: str = field(default="raco", metadata={"help": " | ".join(TRAIN_METHODS)})
    weights: str = field(default="0.8,0.2", metadata={
        "help": "user weights, one per objective (normalised); 0.8,0.2 is one of the paper's"})
    c: float = field(default=0.4, metadata={"help": "CAGrad radius for raco and cagrad, in [0, 1)"})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate of AdamW"})
    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "pairs per micro-batch (per process)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    solve_per: str = field(default="step", metadata={
        "help": "step | micro_batch: where the dual is solved under accumulation (see harness/scale.py)"})
    backward: str = field(default="per_objective", metadata={
        "help": "per_objective | shared: the m gradients from m backward passes, or exactly the same from one "
                "(harness/shared_backward.py)"})
    objectives: str = field(default="", metadata={
        "help": "the data's objectives to use, in order (\"\": all; the world's: quality,conciseness)"})
    model: str = field(default="models/world-tiny", metadata={"help": "local directory or hub id"})
    data: str = field(default="data/world_train.jsonl", metadata={
        "help": ".jsonl / .json / .parquet file, local dataset dir or hub id"})
    data_format: str = field(default="auto", metadata={"help": "auto | signed | pku | moa"})
    split: str = field(default="train", metadata={"help": "split, for datasets loaded through `datasets`"})
    max_length: int = field(default=256, metadata={"help": "prompt + response tokens (at least 2)"})
    max_prompt_length: int = field(default=192, metadata={
        "help": "prompt tokens kept (from the end) when a pair is too long"})
    warmup: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up before the cosine decay"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's decoupled weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "clip the combined direction's norm (0 = off); rescales d, never turns it"})
    seed: int = field(default=42, metadata={"help": "data order and sampling"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    threads: int = field(default=1, metadata={"help": THREADS_HELP})
    dtype: str = field(default="float32", metadata={
        "help": "float32 | bfloat16 (bf16 autocast over float32 weights; no fp16 loss scaling)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "non-reentrant: the graph is walked once per objective"})
    lora_r: int = field(default=0, metadata={
        "help": "LoRA rank on every linear layer (0 = full fine-tuning); needs peft"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)"})
    fsdp: bool = field(default=False, metadata={
        "help": "under torchrun: shard parameters, gradients and AdamW's state (FSDP2)"})
    precompute_ref: bool = field(default=False, metadata={
        "help": "the reference's log-probs of every pair once, cached in --out; frees the reference"})
    gram_layers: int = field(default=0, metadata={
        "help": "> 0: the Gram matrix from the last K transformer blocks only (see harness/scale.py)"})
    allow_unknown_tokens: bool = field(default=False, metadata={
        "help": "train even when over a quarter of the data's tokens are unknown to the model's tokenizer"})
    eval_prompts: int = field(default=128, metadata={
        "help": "held-out world prompts sampled before/after training (0 = skip)"})
    log_every: int = field(default=5, metadata={"help": "steps averaged into each line of metrics.jsonl"})
    report_to: str = field(default="none", metadata={
        "help": "none | tensorboard | wandb (or both, comma-separated): where metrics.jsonl's lines go too"})
    save_every: int = field(default=100, metadata={"help": "steps between checkpoints in --out/checkpoints (0 = none)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many of the latest checkpoints to keep"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its latest checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace another run's files in --out"})
    max_bad_steps: int = field(default=10, metadata={
        "help": "stop after this many consecutive steps with non-finite losses or gradients"})
    out: str = field(default="out/train", metadata={
        "help": "output directory: metrics.jsonl, checkpoints/, policy/, summary.json"})


def parse_args(argv=None):
    return parse_config(Config, argv, description=__doc__.split("\n\n")[0])


def objective_losses(policy, reference, batch, cfg, names):
    """The m per-objective DPO losses of one micro-batch, the policy's log-probs of its 2B responses that they all
    read (dpo.py), and their DPO metrics.

    batch: both responses of B pairs stacked for one forward pass, and their labels signs (B, m)
    (harness/batches.collate); reference(batch): pi_ref's log-probs of y_a and y_b (harness/reference.py)."""
    with autocast(batch["input_ids"].device, cfg.dtype == "bfloat16"):
        logps, lengths = dpo.completion_logps(policy, batch)  # (2B,): y_a of every pair, then y_b
    (policy_a, policy_b), (length_a, length_b) = logps.chunk(2), lengths.chunk(2)
    ref_a, ref_b = reference(batch)  # AMoPO's loss needs none, but its logged implicit rewards compare only so
    if cfg.method == "amopo":  # the baseline that changes the loss: reference-free and length-normalised
        margin = dpo.amopo_margin(policy_a, policy_b, length_a, length_b)
    else:
        margin = dpo.log_ratio_margin(policy_a, policy_b, ref_a, ref_b)  # Delta, one per pair
    losses = dpo.dpo_losses(margin, batch["signs"], cfg.beta)  # L_i for every objective: (m,)
    metrics = dpo.dpo_metrics(policy_a, policy_b, ref_a, ref_b, batch["signs"], cfg.beta, names)
    metrics.update({f"{name}/loss": losses[i].item() for i, name in enumerate(names)})
    return losses, logps, metrics


def world_scores(run, model, tokenizer, cfg, weights, names, pairs, reference=None):
    """The world's exact scores of samples on --eval-prompts held-out prompts (harness/sampling.score_on_world), and
    KL to the reference if one is given; None unless the data is the world's and this process evaluates."""
    on_world = set(names) <= set(world.OBJECTIVES) and world.is_world_prompt(pairs[0].prompt)
    if cfg.eval_prompts <= 0 or not on_world or not run.evaluates:
        return None
    reference = reference.as_model(run.device) if reference is not None else None
    return score_on_world(model, tokenizer, names, weights, cfg.eval_prompts, cfg.seed, reference)


def main(cfg):
    # --out is this run's from here to its end; every flag is checked, and what --out holds decided (harness/run.py)
    with Run(cfg) as run:
        if run.finished:  # the same command again on a finished run: nothing to do, nothing removed
            return run.report(run.finished)

        # Load: the tokenizer and the pairs first (a bad line of data costs no model load), then the policy.
        tokenizer = load_tokenizer(cfg.model)
        pairs, names, weights = load_training_pairs(cfg, tokenizer, run)  # weights w: one per objective, on the simplex
        policy = load_model(cfg.model, run.device, tokenizer=tokenizer)[1]
        check_model(cfg, policy)
        # pi_ref, the frozen initial policy (a copy, or its log-probs cached, or LoRA's base), and FSDP2 and LoRA
        policy, reference = policy_and_reference(cfg, policy, tokenizer, pairs, run)

        # Build: AdamW with linear warm-up and cosine decay; the combination of the m gradients; the micro-batches.
        from transformers import get_cosine_schedule_with_warmup
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup * cfg.steps), cfg.steps)
        method = "lw" if cfg.method == "amopo" else cfg.method  # AMoPO weights its own losses
        combine = multi_objective_backward(cfg, policy, trainable, weights, method, names, lambda: run.logs(run.step))
        stream = batches(len(pairs), cfg.batch_size, cfg.seed, run.rank, run.world_size)  # endless, reshuffled

        # Train: one optimizer step of Algorithm 1 per iteration.
        run.start(policy, tokenizer, optimizer, scheduler, stream,
                  score_reference=lambda: world_scores(run, policy, tokenizer, cfg, weights, names, pairs))
        for step in run.steps():
            step_metrics = {}
            for _ in range(cfg.grad_accum):  # micro-batches: each objective's gradient accumulates over them
                indices = next(stream)  # line 1: a minibatch of pairs
                batch = collate([pairs[i] for i in indices], tokenizer, cfg.max_length, cfg.max_prompt_length,
                                run.device, indices)
                losses, logps, metrics = objective_losses(policy, reference, batch, cfg, names)  # line 2: every L_i
                combine.backward(losses, logps)  # line 2: each g_i, a backward pass each (or one: --backward shared)
                for key, value in metrics.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value / cfg.grad_accum
            step_metrics.update(combine.finish())  # lines 3-7: .grad = d = sum_i a_i g_i, and its diagnostics
            norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf))  # d's length only
            step_metrics.update(grad_norm=norm, lr=scheduler.get_last_lr()[0])
            step_metrics["loss/weighted"] = sum(w * step_metrics[f"{n}/loss"] for w, n in zip(weights, names))
            # finite when every L_i and d are, on every process (a weight of 0 times an infinite loss is NaN)
            finite = run.everywhere(math.isfinite(step_metrics["loss/weighted"]) and math.isfinite(norm))
            if finite:  # else the step is skipped, counted, and the run stops if it keeps happening
                optimizer.step()  # line 8: theta <- theta - eta d, with AdamW's eta
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if run.end_step(step, step_metrics if finite else None):  # log; checkpoint; True after Ctrl-C, SIGTERM
                break
        if run.interrupted:  # the checkpoint is saved: exit 130 (Ctrl-C) or 143 (SIGTERM), nothing evaluated
            raise SystemExit(128 + run.interrupted)

        # Save: the policy's scores beside the reference's, the policy in Hugging Face format, summary.json.
        after = world_scores(run, policy, tokenizer, cfg, weights, names, pairs, reference)
        summary = run.finish(policy, tokenizer, names, weights, after)
    return run.report(summary)


if __name__ == "__main__":
    config = run_command(parse_args)
    run_command(main, config, interrupted=lambda: left_behind(dataclasses.asdict(config)))
