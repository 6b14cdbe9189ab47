"""Two CPU processes (gloo) must step exactly as one process with the whole batch: replicated (explicit all-reduce
instead of DDP) and sharded with PyTorch's FSDP2 (one backward per objective, reduce-scattered into the shards).

This is the multi-GPU path of raco.py run where no GPU is needed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

import train
from harness.scale import ScaledBackward, ShardedRows
from raco import MultiObjectiveBackward
from tiny import ROOT, tiny_llama, word_tokenizer

WEIGHTS = [0.4, 0.6]
STEPS = 3


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(STEPS, 8, 5, dtype=torch.float64)  # 8 rows per step
    targets = torch.randn(STEPS, 8, 3, dtype=torch.float64)
    return model, x, targets


def losses(model, x, targets):
    """Two objectives that conflict, reading one number per row as DPO's losses read one log-prob per response: fit
    it to the targets' sum, or keep it near -1. Returns (losses (2,), the rows' numbers)."""
    rows = model(x).sum(1)
    return torch.stack([(rows - targets.sum(1)).pow(2).mean(), (rows + 1.0).pow(2).mean()]), rows


def run_steps(model, micro_batches, solve_per):
    """STEPS AdamW steps; micro_batches(step) lists this process's (x, targets). Returns the first direction and the
    final parameters, each flattened (whole tensors, gathered from the shards under FSDP)."""
    whole = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    params = list(model.parameters())
    sharded = any(isinstance(p, DTensor) for p in params)
    rows = (ShardedRows if sharded else MultiObjectiveBackward)(params, WEIGHTS, "raco", c=0.5)
    step = ScaledBackward(rows, solve_per, sharded)
    for k in range(STEPS):
        for x, targets in micro_batches(k):
            step.backward(*losses(model, x, targets))
        step.finish()
        if k == 0:
            direction = torch.cat([whole(p.grad).reshape(-1) for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return direction, torch.cat([whole(p.detach()).reshape(-1) for p in model.parameters()])


def worker(rank, port, solve_per, sharded, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, x, targets = model_and_data()
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (2,))
        fully_shard(model[0], mesh=mesh)  # the first layer on its own, the rest with the root: two groups
        fully_shard(model, mesh=mesh)
    # rank 0 holds rows 0-3 of each step, rank 1 rows 4-7, in two micro-batches of two rows (accumulation)
    rows = lambda k: [(x[k, i:i + 2], targets[k, i:i + 2]) for i in (4 * rank, 4 * rank + 2)]  # noqa: E731
    results[rank] = run_steps(model, rows, solve_per)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "fsdp"])
@pytest.mark.parametrize("solve_per", ["step", "micro_batch"])
def test_two_processes_match_one(solve_per, sharded):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), solve_per, sharded, results), nprocs=2)
    model, x, targets = model_and_data()
    if sharded:  # FSDP averages each micro-batch over the processes: the solve sees both processes' rows at once
        groups = [[0, 1, 4, 5], [2, 3, 6, 7]]
    else:  # replicated: each process solves its own micro-batches, and the directions are averaged
        groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
    expected = run_steps(model, lambda k: [(x[k, g], targets[k, g]) for g in groups], solve_per)
    for got in (results[0], results[1]):  # every process steps on the same direction, to the same parameters
        for value, reference in zip(got, expected, strict=True):
            assert torch.allclose(value, reference, rtol=1e-10, atol=1e-13)
    initial = torch.cat([p.detach().reshape(-1) for p in model_and_data()[0].parameters()])
    assert (expected[1] - initial).abs().max() > 0.05  # the steps did move the parameters


def torchrun(args, out):
    """train.py under torchrun with two CPU processes (gloo), one thread each; returns its metrics.jsonl lines."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    result = subprocess.run([*launch, "train.py", *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(out)


def metrics(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory):
    """A tiny Llama whose output layer is its input embedding (as the world's model and many small LMs have it)."""
    path = tmp_path_factory.mktemp("tied-model")
    tiny_llama(tie_word_embeddings=True).save_pretrained(path, safe_serialization=True)
    word_tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_train_py_under_torchrun_replicated_fsdp_and_shared_equal_one_process_and_fsdp_resumes_exactly(
        tied_model_dir, tiny_pairs, tmp_path):
    common = ["--model", tied_model_dir, "--data", tiny_pairs, "--steps", "4", "--log-every", "1", "--lr", "1e-2",
              "--eval-prompts", "0", "--save-every", "2", "--method", "raco", "--weights", "0.3,0.7"]
    train.main(train.parse_args([*common, "--batch-size", "4", "--out", str(tmp_path / "one")]))
    one = metrics(tmp_path / "one")
    weights = lambda run: load_file(str(tmp_path / run / "policy" / "model.safetensors"))  # noqa: E731
    for run, extra in (("replicated", []), ("fsdp", ["--fsdp"]), ("replicated-shared", ["--backward", "shared"])):
        logged = torchrun([*common, "--batch-size", "2", *extra], tmp_path / run)
        # each process saw 2 of the 4 pairs; the logged losses and coefficients are the mean over processes
        for a, b in zip(one, logged, strict=True):
            for key in ("good/loss", "short/loss", "good/rewards/margins", "a/good", "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (run, key)
        assert weights(run).keys() == weights("one").keys(), run  # a tied weight saved once, as one process saves it
        # the one shared pass rounds the gradients differently, and AdamW divides each coordinate by its own size: a
        # near-zero gradient rounded otherwise moves its weight by up to ~1e-6 over these steps at lr 1e-2
        atol = 1e-5 if "shared" in run else 1e-6
        for key, value in weights("one").items():
            assert torch.allclose(value, weights(run)[key], rtol=1e-4, atol=atol), (run, key)
    # FSDP resume from a torch.distributed.checkpoint checkpoint: as if stopped right after step 2
    final = weights("fsdp")
    out = tmp_path / "fsdp"
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "policy")
    (out / "summary.json").unlink()
    torchrun([*common, "--batch-size", "2", "--fsdp"], out)
    assert all(torch.equal(value, weights("fsdp")[key]) for key, value in final.items())
