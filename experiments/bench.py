"""Benchmarks, each printed as measurements side by side from one run (these machines are noisy).

    python experiments/bench.py                  # everything this machine can run (CPU: a few minutes)
    python experiments/bench.py --only step      # one part: solver | step | subset | logps

1. solver: cagrad.coefficients, time per call for m = 2, 3, 8, 16 (raco), next to lw (no solve) as the floor.
2. step: one whole optimizer step (reference forward, policy forward, the backward pass(es), Gram matrix, solve,
   combination, AdamW) of DPO-LW, RACO with a backward pass per objective and RACO with one shared pass
   (--backward shared), for m = 1 to 5 objectives on the same batches, timed in alternation, as ratios to DPO-LW;
   and each step's peak memory (CUDA: the allocator's peak; CPU: the peak resident size of a fresh process each).
   CPU: a ~20M-parameter Llama, 8 pairs x 128 tokens, float32. CUDA: a Qwen3-0.6B-shaped model (random weights,
   float32 master weights under bf16 autocast, as train.py runs it), 8 pairs x 512 tokens.
3. subset: the subset-Gram step (--gram-layers K) on the same model and on the embedded world: its time against
   DPO-LW, and the cosine between its direction and the exact RACO direction on the same batch.
4. logps: peak memory of dpo.sequence_logps against a naive float32 log_softmax over a 152k vocabulary (CUDA only).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types

import torch

if __package__ in (None, ""):  # run as a script, python experiments/bench.py: the project's modules are one up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dpo
from cagrad import coefficients
from harness.batches import tokenize_pairs
from harness.command_line import THREADS_HELP, OneLineParser, check_flags, check_positive, run_command, use_threads
from harness.models import load_model, pick_device
from harness.preference_data import load_pairs
from harness.scale import multi_objective_backward

def best_of(fn, repeats, rounds=5):
    """Seconds per call: the best of `rounds` rounds of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - start) / repeats)
    return min(times)


def bench_solver():
    print("cagrad.coefficients, time per call (best of 5 rounds)")
    generator = torch.Generator().manual_seed(0)
    for m in (2, 3, 8, 16):
        G = torch.randn(m, 1000, generator=generator, dtype=torch.float64)
        H, w = G @ G.T, torch.full((m,), 1.0 / m)
        repeats = 2000 if m < 8 else 50
        raco = best_of(lambda: coefficients(H, w, "raco"), repeats)
        lw = best_of(lambda: coefficients(H, w, "lw"), repeats)
        print(f"  m = {m:2d}: raco {raco * 1e6:9.1f} us   lw {lw * 1e6:6.1f} us   ratio {raco / lw:6.1f}")


# ----------------------------------------------------------------------------------------------------------------
# One whole optimizer step

def bench_model(device, objectives=2):
    """(model, batch, description): the CPU or the GPU benchmark model with random weights, and a token batch whose
    pairs have a label per objective (+1, -1 or 0, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    if device.type == "cuda":
        config = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                             num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
        model, pairs, length = Qwen3ForCausalLM(config), 8, 512
    else:
        config = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=8)
        model, pairs, length = LlamaForCausalLM(config), 8, 128
    ids = torch.randint(0, config.vocab_size, (2 * pairs, length), generator=torch.Generator().manual_seed(1))
    completion = torch.zeros_like(ids)
    completion[:, length // 4:] = 1  # a quarter of every sequence is prompt
    signs = torch.randint(-1, 2, (pairs, objectives), generator=torch.Generator().manual_seed(2)).float()
    signs[:, 0] = 1.0  # every pair decided for the first objective
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "completion_mask": completion.to(device), "signs": signs.to(device)}
    dtype = "float32 weights, bf16 autocast" if device.type == "cuda" else "float32"
    size = sum(p.numel() for p in model.parameters()) / 1e6
    return model.to(device), batch, f"{size:.1f}M-parameter {type(model).__name__}, {pairs} pairs x {length} tokens, " \
                                    f"{dtype}, {device.type}"


KINDS = {"lw": ("lw", "per_objective"), "raco": ("raco", "per_objective"), "shared": ("raco", "shared")}


class Step:
    """train.py's step on a fixed batch, on a copy of the model of its own: reference forward, policy forward, losses,
    the multi-objective backward (harness/scale.multi_objective_backward: DPO-LW's single backward pass, RACO's
    backward pass per objective or its one shared pass, the subset Gram), clip, AdamW; uniform weights over the
    batch's objectives."""

    def __init__(self, model, batch, method, backward="per_objective", gram_layers=0):
        import copy
        self.model, self.batch, self.method = copy.deepcopy(model), batch, method
        model = self.model
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if batch["input_ids"].is_cuda else None
        if self.autocast is not None:
            self.reference.to(torch.bfloat16)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-6)
        config = types.SimpleNamespace(gram_layers=gram_layers, solve_per="step", c=0.4, backward=backward,
                                       gradient_checkpointing=False, fsdp=False)
        m = batch["signs"].shape[1]
        self.backward = multi_objective_backward(config, model, trainable, [1.0 / m] * m, method, None,
                                                 lambda: False)  # as on train.py's steps that log nothing

    def losses(self):
        """The losses and the policy's log-probs they read, as train.objective_losses makes them."""
        with self.autocast or torch.autocast("cpu", enabled=False):
            logps = dpo.completion_logps(self.model, self.batch)[0]
            with torch.no_grad():
                ref_a, ref_b = dpo.completion_logps(self.reference, self.batch)[0].chunk(2)
        return dpo.dpo_losses(dpo.log_ratio_margin(*logps.chunk(2), ref_a, ref_b), self.batch["signs"], 0.1), logps

    def __call__(self):
        self.backward.backward(*self.losses())
        self.backward.finish()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def direction(self):
        """The direction this step writes into .grad, flattened; no update."""
        self.backward.backward(*self.losses())
        self.backward.finish()
        d = torch.cat([p.grad.reshape(-1) for p in self.model.parameters() if p.grad is not None]).clone()
        self.optimizer.zero_grad(set_to_none=True)
        return d


def alternate(steps, rounds, sync):
    """Median seconds per step of each callable, timed in alternation (A B A B ...) so slow phases of the machine
    hit both alike."""
    times = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up: allocations, kernels, the lazily made gradient buffers
        step()
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(kind, objectives, device):
    """Peak memory of a step of KINDS[kind] with `objectives` objectives (bytes): CUDA's allocator peak here; on CPU
    the peak resident size of a fresh process (Linux), which includes the interpreter and the model for every kind
    alike."""
    if device.type == "cpu":
        child = subprocess.run([sys.executable, __file__, "--memory-of", kind, "--objectives", str(objectives),
                                "--threads", "1"],
                               capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(child.stdout.strip().splitlines()[-1])["peak"]
    model, batch, _ = bench_model(device, objectives)
    step = Step(model, batch, *KINDS[kind])
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def bench_step(device, rounds, objectives=(1, 2, 3, 4, 5)):
    """DPO-LW, RACO with a backward pass per objective and RACO with one shared pass (harness/shared_backward.py),
    for m = 1 to 5 objectives: time per step, timed in alternation at each m, and peak memory."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ratios = {}
    for m in objectives:
        model, batch, described = bench_model(device, m)
        if not ratios:
            print(f"one whole optimizer step, {described}; median of {rounds} steps each, in alternation; peak memory "
                  f"in GiB ({'the allocator' if device.type == 'cuda' else 'a fresh process, VmHWM'})")
            print(f"  {'m':>2} {'DPO-LW':>10} {'RACO, per objective':>27} {'RACO, shared':>27}   peak: LW / per "
                  "objective / shared")
        times = alternate({kind: Step(model, batch, *KINDS[kind]) for kind in KINDS}, rounds, sync)
        memory = {kind: peak_memory(kind, m, device) / 2**30 for kind in KINDS}
        ratios[m] = {kind: times[kind] / times["lw"] for kind in KINDS}
        print(f"  {m:>2} {times['lw'] * 1e3:7.0f} ms {times['raco'] * 1e3:14.0f} ms ({ratios[m]['raco']:.2f}x) "
              f"{times['shared'] * 1e3:14.0f} ms ({ratios[m]['shared']:.2f}x)   {memory['lw']:.2f} / "
              f"{memory['raco']:.2f} / {memory['shared']:.2f}")
    if {2, 3} <= set(ratios):
        print(f"  RACO shared / DPO-LW: {ratios[2]['shared']:.2f} at m = 2 (target <= 1.25), {ratios[3]['shared']:.2f} "
              f"at m = 3 (target <= 1.5); per objective: {ratios[2]['raco']:.2f} and {ratios[3]['raco']:.2f}")


def cosine(a, b):
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def bench_subset(device, rounds):
    """--gram-layers K against exact RACO: time per step (against DPO-LW) and the cosine of the two directions."""
    model, batch, described = bench_model(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    exact = Step(model, batch, "raco").direction()
    print(f"subset-Gram step (--gram-layers K), {described}")
    for k in (1, len(model.model.layers) // 2):
        subset = Step(model, batch, "raco", gram_layers=k)
        times = alternate({"lw": Step(model, batch, "lw"), "subset": subset}, rounds, sync)
        print(f"  K = {k}: {times['subset'] / times['lw']:.2f}x DPO-LW's step; cosine to exact RACO's direction "
              f"{cosine(subset.direction(), exact):.4f}")
    bench_subset_world(rounds)


def bench_subset_world(rounds):
    """The same on the embedded world: its shipped model and a micro-batch of 16 of its pairs (train.py's default)."""
    tokenizer, model = load_model("models/world-tiny", torch.device("cpu"))
    pairs, _ = load_pairs("data/world_train.jsonl", objectives=["quality", "conciseness"], limit=16)
    tokens = tokenize_pairs(tokenizer, [p.prompt for p in pairs], [p.response_a for p in pairs],
                            [p.response_b for p in pairs])
    batch = {k: v for k, v in tokens.items() if torch.is_tensor(v)}
    batch["signs"] = torch.tensor([p.signs for p in pairs], dtype=torch.float32)
    exact = Step(model, batch, "raco").direction()
    subset = Step(model, batch, "raco", gram_layers=1)
    times = alternate({"lw": Step(model, batch, "lw"), "subset": subset, "raco": Step(model, batch, "raco"),
                       "shared": Step(model, batch, "raco", "shared")}, rounds * 10, lambda: None)
    print(f"  the embedded world (134k parameters, 2 blocks, 16 pairs), K = 1: {times['subset'] / times['lw']:.2f}x "
          f"DPO-LW's step (exact RACO {times['raco'] / times['lw']:.2f}x, with one shared backward pass "
          f"{times['shared'] / times['lw']:.2f}x); cosine to exact RACO's direction "
          f"{cosine(subset.direction(), exact):.4f}")


def bench_logps_memory(device):
    N, T, V = 8, 512, 151936
    logits = torch.randn(N, T, V, device=device, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, V, (N, T), device=device)
    mask = torch.ones_like(ids)

    def naive():
        full = logits[:, :-1].float().log_softmax(-1)
        return (full.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum()

    def ours():
        return dpo.sequence_logps(logits, ids, mask)[0].sum()

    peaks = {}
    for name, fn in (("naive float32 log_softmax", naive), ("dpo.sequence_logps", ours)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().backward()
        logits.grad = None
        torch.cuda.synchronize()
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**30
    print(f"log-probs of {N} x {T} tokens over a {V}-token vocabulary (bf16 logits: "
          f"{logits.numel() * 2 / 2**30:.2f} GiB), forward + backward, peak extra memory")
    for name, gib in peaks.items():
        print(f"  {name:<28} {gib:6.2f} GiB")
    print(f"  ratio naive / ours: {peaks['naive float32 log_softmax'] / peaks['dpo.sequence_logps']:.2f}")


def main():
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    parser.add_argument("--only", choices=["solver", "step", "subset", "logps"], help="one part only")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per method (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help=THREADS_HELP + "; here the default is 0: what the "
                                                                            "machine can do (default: %(default)s)")
    parser.add_argument("--memory-of", choices=list(KINDS), help=argparse.SUPPRESS)  # a child measuring one peak
    parser.add_argument("--objectives", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_positive(args, ("rounds",))
    check_flags(args, [("threads", args.threads >= 0)])
    device = pick_device(args.device)
    use_threads(args.threads, device)
    if args.memory_of:
        model, batch, _ = bench_model(device, args.objectives)
        step = Step(model, batch, *KINDS[args.memory_of])
        step(), step()
        with open("/proc/self/status") as f:  # VmHWM: this process image's peak (ru_maxrss counts the parent's too)
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        print(json.dumps({"peak": peak}))
        return
    parts = [args.only] if args.only else ["solver", "step", "subset", "logps"]
    if "solver" in parts:
        bench_solver()
    if "step" in parts:
        bench_step(device, args.rounds)
    if "subset" in parts:
        bench_subset(device, args.rounds)
    if "logps" in parts:
        if device.type == "cuda":
            bench_logps_memory(device)
        else:
            print("log-prob memory: needs CUDA (the CPU allocator reports no peak); run on a GPU machine")


if __name__ == "__main__":
    run_command(main)
