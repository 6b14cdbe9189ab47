"""raco.MultiObjectiveBackward at scale: torchrun, FSDP2, per-micro-batch duals, a subset Gram matrix, one backward
for loss weighting. The algorithm is raco.py's: the classes here compose its steps (backward, mean_gradients, solve,
write_direction) with what a run at scale needs, each opt-in by a flag of train.py (`multi_objective_backward` picks).

Several processes (torchrun), two ways:
- replicated (no --fsdp): every process holds the whole model and the gradients of its own micro-batches. The
  reduction is explicit: the per-objective gradients before the solve (--solve-per step), or the solved directions
  (--solve-per micro_batch), averaged over processes.
- sharded (--fsdp, PyTorch's FSDP2): each process holds a shard of every parameter, and FSDP reduce-scatters each
  objective's backward into the shard's .grad, averaged over processes. The algorithm is the same over shards: G
  holds this process's shard of every g_i (ShardedRows), H is the sum over processes of each shard's G G^T (one
  all-reduce of m x m numbers), and d = a^T G is formed shard by shard. Under FSDP "micro_batch" therefore solves on
  each micro-batch of all processes together (world_size x batch_size pairs), as the reduce-scatter has averaged them.
--solve-per micro_batch: the dual solved on every micro-batch's own gradients and the directions averaged, as the
  authors' code does (with one micro-batch per step both modes coincide).
--gram-layers K: H from the gradients of the last K blocks only (a partial backward per objective), then one full
  backward of sum_i a_i L_i; solved per micro-batch; not under FSDP.
Loss weighting (DPO-LW, and AMoPO, whose losses are weighted): d = g0 = grad sum_i w_i L_i needs no per-objective
  gradients, so one backward pass of the weighted loss, except on steps whose diagnostics are logged.
"""
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from harness import distributed
from harness.models import transformer_blocks
from harness.shared_backward import shared_or_fallback
from raco import MultiObjectiveBackward, check_losses, flat_views, gradient_rows, gram, objective_cotangents

WEIGHTED_LOSS_METHODS = ("lw",)  # d = g0: one backward pass, no Gram matrix needed
SOLVE_PER = ("step", "micro_batch")  # where the dual is solved under accumulation (--solve-per)


def multi_objective_backward(cfg, policy, params, weights, method, names, logs_this_step):
    """raco.MultiObjectiveBackward for a single process solving once per step; the compositions below where the run
    asks for more. logs_this_step() says whether the current step's diagnostics are logged (loss weighting computes
    per-objective gradients only then)."""
    params = [p for p in params if p.requires_grad]
    if cfg.gram_layers:
        blocks = transformer_blocks(policy)[-cfg.gram_layers:]
        return SubsetGramBackward(params, weights, method, cfg.c, names,
                                  [p for block in blocks for p in block.parameters() if p.requires_grad])
    sharded = any(isinstance(p, DTensor) for p in params)
    per_objective = ShardedRows if sharded else MultiObjectiveBackward
    if cfg.backward == "shared":  # one backward pass for all m objectives, where it applies
        rows = shared_or_fallback(cfg, policy, params, weights, method, names, per_objective)
    else:
        rows = per_objective(params, weights, method, cfg.c, names)
    if distributed.world_size() > 1 or cfg.solve_per == "micro_batch":
        rows = ScaledBackward(rows, cfg.solve_per, sharded)
    return WeightedLossBackward(rows, logs_this_step) if method in WEIGHTED_LOSS_METHODS else rows


class ShardedRows(MultiObjectiveBackward):
    """MultiObjectiveBackward over FSDP2 shards: each parameter is a DTensor, and each objective's backward pass
    reduce-scatters into a fresh .grad that holds this process's shard; row i of G gathers those shards of g_i, and
    the direction is handed back as DTensors over the same shards."""

    def backward(self, losses, logps):
        check_losses(losses, self.weights)
        local = [p.to_local() for p in self.params]
        if self.G is None:
            self.G = gradient_rows(local, len(self.weights))
        cotangents = objective_cotangents(losses, logps)
        for i in range(len(losses)):
            for param in self.params:
                param.grad = None
            logps.backward(cotangents[i], retain_graph=i < len(losses) - 1)
            for param, row in zip(self.params, flat_views(self.G[i], local)):
                if param.grad is not None:
                    row.add_(param.grad.to_local())
        for param in self.params:
            param.grad = None
        self.count += 1

    def write_direction(self, direction):
        self.G.zero_()
        local = [p.to_local() for p in self.params]
        for param, view in zip(self.params, flat_views(direction, local)):
            param.grad = DTensor.from_local(view, param.device_mesh, param.placements, shape=param.shape,
                                            stride=param.stride())


class ScaledBackward:
    """Several processes (replicated or sharded) and the dual per micro-batch, around the per-objective gradients of
    `rows` (a MultiObjectiveBackward or ShardedRows): backward(losses, logps) per micro-batch, then finish()."""

    def __init__(self, rows, solve_per="step", sharded=False):
        if solve_per not in SOLVE_PER:
            raise ValueError(f"solve_per must be 'step' or 'micro_batch', got {solve_per!r}")
        self.rows, self.solve_per, self.sharded = rows, solve_per, sharded
        self.params, self.weights = rows.params, rows.weights
        self.replicated = distributed.world_size() > 1 and not sharded
        self.direction, self.diagnostics, self.count = None, {}, 0  # the micro-batches' directions, summed

    def backward(self, losses, logps):
        self.rows.backward(losses, logps)  # one backward per objective into G, as in one process
        self.count += 1
        if self.solve_per == "micro_batch":
            G = self.rows.mean_gradients()  # this micro-batch's own gradients (one micro-batch in G)
            a, diagnostics = self.rows.solve(self.gram(G))
            if self.direction is None:
                self.direction = torch.zeros_like(G[0])
            self.direction.addmv_(G.T, a.to(G))
            G.zero_()
            for key, value in diagnostics.items():
                self.diagnostics[key] = self.diagnostics.get(key, 0.0) + value

    def finish(self):
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        if self.solve_per == "step":
            G = self.rows.mean_gradients()
            if self.replicated:
                distributed.all_reduce_mean([G])
            a, diagnostics = self.rows.solve(self.gram(G))
            direction = torch.mv(G.T, a.to(G))
        else:  # the micro-batches' directions, averaged
            direction, diagnostics = self.direction.div_(self.count), {
                k: v / self.count for k, v in self.diagnostics.items()}
            if self.replicated:
                distributed.all_reduce_mean([direction])
        self.rows.write_direction(direction)  # .grad holds it now; optimizer.zero_grad(set_to_none=True) frees it
        self.direction, self.diagnostics, self.count = None, {}, 0
        return diagnostics

    def gram(self, G):
        H = gram(G)
        if self.sharded:  # FSDP: each process holds a shard of every g_i; H is the sum of the shards' Gram matrices
            dist.all_reduce(H)
        return H


class WeightedLossBackward:
    """Loss weighting (DPO-LW; AMoPO's weighted losses): d = g0 = grad sum_i w_i L_i, one backward pass accumulated in
    .grad. On steps whose diagnostics are logged (wants_diagnostics() at a step's first micro-batch), `rows` computes
    the per-objective gradients instead, and its solve (a = w) gives the cosines and norms to log."""

    def __init__(self, rows, wants_diagnostics):
        self.rows, self.wants_diagnostics = rows, wants_diagnostics
        self.params, self.weights = rows.params, rows.weights
        self.per_objective, self.count = None, 0  # this step's path, fixed by its first micro-batch

    def backward(self, losses, logps):
        check_losses(losses, self.weights)
        if self.per_objective is None:
            self.per_objective = bool(self.wants_diagnostics())
        if self.per_objective:
            self.rows.backward(losses, logps)
        else:
            (self.weights.to(losses) @ losses).backward()
        self.count += 1

    def finish(self):
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        if self.per_objective:
            diagnostics = self.rows.finish()
        else:  # the direction is in .grad already, summed over micro-batches
            diagnostics = _mean_grads(self.params, self.count)
        self.per_objective, self.count = None, 0
        return diagnostics


class SubsetGramBackward:
    """--gram-layers: H from the gradients of gram_params only (autograd walks back just as far as they are), then one
    full backward of sum_i a_i L_i; the dual per micro-batch, and the coefficients' diagnostics averaged."""

    def __init__(self, params, weights, method, c, names, gram_params):
        self.plain = MultiObjectiveBackward(params, weights, method, c, names)  # for its solve
        self.params, self.gram_params = self.plain.params, list(gram_params)
        self.diagnostics, self.count = {}, 0

    def backward(self, losses, logps):
        check_losses(losses, self.plain.weights)
        grads = [torch.autograd.grad(losses[i], self.gram_params, retain_graph=True, materialize_grads=True)
                 for i in range(len(losses))]
        a, diagnostics = self.plain.solve(gram(torch.stack([torch.cat([g.reshape(-1) for g in per_objective])
                                                            for per_objective in grads])))
        (a.to(losses) @ losses).backward()
        for key, value in diagnostics.items():
            self.diagnostics[key] = self.diagnostics.get(key, 0.0) + value
        self.count += 1

    def finish(self):
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        _mean_grads(self.params, self.count)
        diagnostics = {k: v / self.count for k, v in self.diagnostics.items()}
        self.diagnostics, self.count = {}, 0
        return diagnostics


def _mean_grads(params, count):
    """.grad, summed over `count` micro-batches, made their mean (and the mean over replicated processes); {}: no
    diagnostics."""
    grads = [p.grad for p in params if p.grad is not None]
    torch._foreach_div_(grads, float(count))
    if distributed.world_size() > 1 and not any(isinstance(p, DTensor) for p in params):
        distributed.all_reduce_mean(grads)
    return {}
