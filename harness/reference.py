"""The frozen reference pi_ref of DPO's margin, in whichever form a run can afford; the policy made ready to train.

pi_ref is the initial policy, frozen. Three forms, one interface, reference(batch) -> (log pi_ref(y_a|x),
log pi_ref(y_b|x)), each (B,):
- a frozen copy of the model (the default; bf16 under --dtype bfloat16, as it only runs forward);
- --precompute-ref: no copy; its log-probs of every pair, computed once before training and cached in --out under a
  hash of everything they depend on (a stale cache is never read; a damaged one is computed again);
- --lora-r: no copy either; the policy with its LoRA adapters switched off is the initial policy.
"""
import copy
import hashlib
import json
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm

import dpo
from harness.batches import autocast, pair_logps
from harness.models import add_lora, enable_gradient_checkpointing, eval_mode, load_model, shard


class Reference:
    """pi_ref's log-probs of both responses of a batch (harness/batches.collate): from a frozen model, from the
    policy with its adapters off (lora_policy), or from log-probs computed once (cached, (2, N), by pair index)."""

    def __init__(self, model=None, lora_policy=None, cached=None, bf16=False, source=None):
        self.model, self.lora_policy, self.cached, self.bf16, self.source = model, lora_policy, cached, bf16, source

    @torch.no_grad()
    def __call__(self, batch):
        if self.cached is not None:
            ref_a, ref_b = self.cached[:, batch["indices"]]
            return ref_a, ref_b
        adapters_off = self.lora_policy.disable_adapter() if self.model is None else nullcontext()
        with adapters_off, autocast(batch["input_ids"].device, self.bf16):
            return dpo.completion_logps(self.model if self.model is not None else self.lora_policy, batch)[0].chunk(2)

    def as_model(self, device):
        """pi_ref as a model, for the KL of samples: the frozen copy, or the initial model loaded again."""
        return self.model if self.model is not None else load_model(self.source, device)[1]


def policy_and_reference(cfg, policy, tokenizer, pairs, run):
    """The policy ready to train (gradient checkpointing, FSDP2 shards, LoRA adapters, train mode) and pi_ref
    (a Reference) beside it, in the order that keeps pi_ref the initial policy."""
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    model = None
    if not cfg.precompute_ref and cfg.lora_r == 0:  # a frozen copy of the initial policy; bf16 halves it
        model = copy.deepcopy(policy).eval().requires_grad_(False)
        model = model.to(torch.bfloat16) if cfg.dtype == "bfloat16" else model
    if cfg.fsdp:
        policy, model = shard(policy), model and shard(model)
    cached = None
    if cfg.precompute_ref:  # the policy is the reference until it trains: no copy, and no reference forward per step
        with eval_mode(policy):
            cached = reference_cache(cfg, policy, tokenizer, pairs, run)
    if cfg.lora_r > 0:  # the reference is then the policy with its adapters switched off: no second copy either
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha)
    policy.train()
    return policy, Reference(model, policy if cfg.lora_r > 0 else None, cached, cfg.dtype == "bfloat16", cfg.model)


def reference_cache(cfg, reference, tokenizer, pairs, run):
    """--precompute-ref: the reference's log-probs of every pair (2, N), from the run's cache when it matches, else
    computed once (reference_logps) and cached for a resumed or repeated run. The reference is the initial policy
    (with --dtype bfloat16: its float32 weights under autocast, where the per-step reference is a bf16 copy, so the
    two agree to bf16 rounding)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file
    settings = [cfg.max_length, cfg.max_prompt_length, cfg.dtype, getattr(reference.config, "_commit_hash", None)]
    path = reference_cache_path(cfg.out, run.inputs["model"], pairs, settings)
    if os.path.exists(path):
        try:
            logps = load_file(path)["logps"]
            if logps.shape == (2, len(pairs)) and logps.dtype == torch.float32 and bool(torch.isfinite(logps).all()):
                return logps.to(run.device)
        except (OSError, KeyError, SafetensorError):
            pass
        if run.main_process:
            print(f"warning: {path} is damaged; computing the reference's log-probs again", file=sys.stderr)
    logps = reference_logps(reference, tokenizer, pairs, cfg, run)
    if run.main_process:
        os.makedirs(cfg.out, exist_ok=True)
        save_file({"logps": logps.cpu()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return logps


def reference_cache_path(out, model_fingerprint, pairs, settings):
    """Where --precompute-ref keeps the reference's log-probs: a file in --out whose name is a hash of everything
    they depend on (the model's fingerprint, harness/run_directory.input_fingerprints, and its hub revision in
    settings; every pair's text; the tokenisation settings), so a stale cache is never read: change any of them and
    the name changes."""
    digest = hashlib.sha256(json.dumps([model_fingerprint, settings]).encode())
    for pair in pairs:
        digest.update("\0".join((pair.prompt, pair.response_a, pair.response_b)).encode() + b"\1")
    return os.path.join(out, f"reference_logps-{digest.hexdigest()[:16]}.safetensors")


@torch.no_grad()
def reference_logps(model, tokenizer, pairs, cfg, run):
    """log pi_ref(y_a|x) and log pi_ref(y_b|x) of every pair, computed once in batches of --batch-size, tokenised as
    training tokenises them (cfg: train.Config) under --dtype: (2, N) float32 on run.device.

    Under torchrun each process computes an equal share (FSDP's forward is collective, so every process must run
    as many forwards) and all gather the rest."""
    rank, world_size, batch_size = run.rank, run.world_size, cfg.batch_size
    share = list(range(rank, len(pairs), world_size))
    share += share[-1:] * (-(-len(pairs) // world_size) - len(share))  # pad to the same length on every process
    out = []
    for start in tqdm(range(0, len(share), batch_size), desc="reference log-probs", disable=rank != 0):
        batch = [pairs[i] for i in share[start:start + batch_size]]
        out.append(torch.stack(pair_logps(model, tokenizer, batch, cfg.max_length, cfg.max_prompt_length, run.device,
                                          cfg.dtype == "bfloat16")))
    mine = torch.cat(out, 1).float()
    if world_size == 1:
        return mine
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    every = torch.empty(2, len(pairs), device=mine.device)
    for r, part in enumerate(gathered):
        indices = list(range(r, len(pairs), world_size))
        every[:, indices] = part[:, :len(indices)]
    return every
