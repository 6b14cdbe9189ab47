"""Several processes under torchrun: joining them, and reducing what each one saw.

`python train.py` runs one process; `torchrun --nproc_per_node N train.py` runs N, each with its own slice of every
micro-batch. Without --fsdp each holds the whole model (replicated); with it, a shard (FSDP2, harness/models.shard).
The model is never wrapped in DDP, whose hooks would all-reduce .grad after every objective's backward: the
gradients are reduced explicitly instead (harness/scale.py), and so are the few things below.
"""
import os

import torch
import torch.distributed as dist


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialized():
    return dist.is_available() and dist.is_initialized()


def is_main_process():
    return not initialized() or dist.get_rank() == 0


def world_size():
    """Processes that each hold whole gradients of their own data, or shards (1 when not distributed)."""
    return dist.get_world_size() if initialized() else 1


def barrier():
    if initialized():
        dist.barrier()


def start(device):
    """Join torchrun's processes, if it launched this one: (rank, world size, this process's device). device: the
    --device of a single process, a torch.device."""
    if not launched_by_torchrun():
        return 0, 1, device
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():  # one process per GPU
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def stop():
    if initialized():
        dist.destroy_process_group()


def everywhere(flag):
    """flag AND-ed over the processes: a step is taken by all of them or by none."""
    if not initialized():
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


def largest(number):
    """The largest of the processes' integers (a signal that any of them received)."""
    if not initialized():
        return number
    value = torch.tensor([number])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def all_reduce_mean(tensors):
    """Each tensor, in place, the mean over the processes."""
    for t in tensors:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())


def mean_over_processes(logged):
    """Under torchrun each process saw its own micro-batches: the mean over processes of every key one of them has."""
    if not initialized():
        return logged
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, logged)
    keys = dict.fromkeys(k for d in every for k in d)
    return {k: sum(d[k] for d in every if k in d) / sum(k in d for d in every) for k in keys}
