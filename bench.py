"""Benchmarks, each printed as measurements side by side from one run (these machines are noisy).

    python bench.py                # solver time per call, RACO step vs one backward, log-prob memory (GPU only)

1. cagrad.coefficients: time per call for m = 2, 3, 8, 16 (raco), next to lw (no solve) as the floor.
2. One optimizer step's backward on a causal LM: RACO (m autograd.grad calls + Gram + combine) against a plain
   loss.backward() of the weighted loss (what DPO-LW costs in any trainer), as a ratio.
3. Peak memory of dpo.sequence_logps against a naive full float32 log_softmax over a 152k vocabulary (CUDA only:
   the CPU allocator reports no peak).
"""

import argparse
import time

import torch

import dpo
from cagrad import coefficients
from raco import MultiObjectiveBackward


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
        repeats = 2000 if m < 8 else 100
        raco = best_of(lambda: coefficients(H, w, "raco"), repeats)
        lw = best_of(lambda: coefficients(H, w, "lw"), repeats)
        print(f"  m = {m}: raco {raco * 1e6:8.1f} us   lw {lw * 1e6:6.1f} us   ratio {raco / lw:5.1f}")


def bench_step(device, hidden, layers, vocab, batch, length, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 64, 1))
    model = LlamaForCausalLM(config).to(device, dtype)
    ids = torch.randint(0, vocab, (2 * batch, length), device=device)
    mask = torch.ones_like(ids)
    completion = torch.zeros_like(ids)
    completion[:, length // 2:] = 1
    signs = torch.randint(-1, 2, (batch, 2), device=device).float()
    weights = [0.5, 0.5]

    def losses():
        logps, _ = dpo.sequence_logps(model(input_ids=ids, attention_mask=mask).logits, ids, completion)
        return dpo.dpo_losses(logps[:batch] - logps[batch:], signs, 0.1)

    def weighted_backward():
        (torch.tensor(weights, device=device) @ losses()).backward()
        model.zero_grad(set_to_none=True)

    def raco_backward():
        step = MultiObjectiveBackward(model.parameters(), weights, "raco")
        step.backward(losses())
        step.finish()
        model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timed = {}
    for name, fn in (("weighted loss.backward()", weighted_backward), ("RACO backward", raco_backward)):
        fn()  # warm-up
        timed[name] = best_of(lambda: (fn(), sync()), 3, rounds=3)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"one forward + backward, {params:.1f}M-parameter Llama, {2 * batch} x {length} tokens, {dtype}, {device}")
    for name, seconds in timed.items():
        print(f"  {name:<26} {seconds * 1e3:8.1f} ms")
    print(f"  ratio RACO / weighted: {timed['RACO backward'] / timed['weighted loss.backward()']:.2f}")


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    bench_solver()
    if device.type == "cuda":
        bench_step(device, hidden=1024, layers=8, vocab=32000, batch=4, length=512, dtype=torch.bfloat16)
        bench_logps_memory(device)
    else:
        bench_step(device, hidden=128, layers=2, vocab=1000, batch=4, length=64, dtype=torch.float32)
        print("log-prob memory: needs CUDA (the CPU allocator reports no peak); run on a GPU machine")


if __name__ == "__main__":
    main()
