"""Two CPU processes (gloo), each with half of the batch, must write the same direction as one process with all of it.

This is the multi-GPU path of raco.py (explicit all-reduce instead of DDP) run where no GPU is needed.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raco import MultiObjectiveBackward

WEIGHTS = [0.4, 0.6]


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    targets = torch.randn(8, 2, dtype=torch.float64)
    return model, x, targets


def losses(model, x, targets):
    """Two objectives per example that conflict: fit the targets, or keep the outputs small (means over rows)."""
    out = model(x)
    return torch.stack([((out - targets) ** 2).mean(), (out.sum(1) + 1.0).pow(2).mean()])


def run_steps(model, chunks, solve_per):
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco", c=0.5, solve_per=solve_per)
    for x, targets in chunks:
        step.backward(losses(model, x, targets))
    step.finish()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def worker(rank, port, solve_per, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, x, targets = model_and_data()
    half = slice(rank * 4, rank * 4 + 4)
    # two micro-batches of two rows per process: accumulation and the all-reduce together
    chunks = [(x[half][:2], targets[half][:2]), (x[half][2:], targets[half][2:])]
    results[rank] = run_steps(model, chunks, solve_per)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("solve_per", ["step", "micro_batch"])
def test_two_processes_match_one(solve_per):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), solve_per, results), nprocs=2)
    model, x, targets = model_and_data()
    # the same four micro-batches in one process; rank 0 had rows 0-3, rank 1 rows 4-7
    chunks = [(x[i:i + 2], targets[i:i + 2]) for i in (0, 2, 4, 6)]
    expected = run_steps(model, chunks, solve_per)
    assert torch.allclose(results[0], results[1], rtol=0, atol=0)  # every process steps on the same direction
    assert torch.allclose(results[0], expected, rtol=1e-10)
