"""raco.MultiObjectiveBackward at scale: torchrun, FSDP2, per-micro-batch duals, a subset Gram matrix, one backward
for loss weighting. The algorithm is raco.py's; this class only changes where the gradients live and when the dual
is solved, each change opt-in by a flag of train.py (`multi_objective_backward` picks the class).

Several processes (torchrun), two ways:
- replicated (no --fsdp): every process holds the whole model and the gradients of its own micro-batches. The
  reduction is explicit: the per-objective gradients before the solve (--solve-per step), or the solved directions
  (--solve-per micro_batch), averaged over processes.
- sharded (--fsdp, PyTorch's FSDP2): each process holds a shard of every parameter, and FSDP reduce-scatters each
  objective's backward into the shard's .grad, averaged over processes. The algorithm is the same over shards: G
  holds this process's shard of every g_i, H is the sum over processes of each shard's G G^T (one all-reduce of m x m
  numbers), and d = a^T G is formed shard by shard. Under FSDP "micro_batch" therefore solves on each micro-batch
  of all processes together (world_size x batch_size pairs), as the reduce-scatter has already averaged them.
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
from raco import MultiObjectiveBackward

WEIGHTED_LOSS_METHODS = ("lw",)  # d = g0: one backward pass, no Gram matrix needed


def multi_objective_backward(cfg, policy, params, weights, method, names, logs_this_step):
    """raco.MultiObjectiveBackward for a single process solving once per step with per-objective gradients;
    ScaledBackward where the run asks for more. logs_this_step() says whether the current step's diagnostics are
    logged (loss weighting computes per-objective gradients only then)."""
    gram_params = [p for block in transformer_blocks(policy)[-cfg.gram_layers:] for p in block.parameters()
                   if p.requires_grad] if cfg.gram_layers else None
    if distributed.world_size() == 1 and cfg.solve_per == "step" and not gram_params \
            and method not in WEIGHTED_LOSS_METHODS:
        return MultiObjectiveBackward(params, weights, method, cfg.c, names)
    return ScaledBackward(params, weights, method, cfg.c, names, cfg.solve_per, gram_params, logs_this_step)


class ScaledBackward(MultiObjectiveBackward):
    """The same use as MultiObjectiveBackward: backward(losses) per micro-batch, then finish().

    solve_per: "step" (accumulate, then solve once) or "micro_batch"; gram_params: the parameters whose gradients
    form H (the subset-Gram step), or None for all; diagnostics(): whether this step's Gram diagnostics are wanted.
    """

    def __init__(self, params, weights, method="raco", c=0.4, names=None, solve_per="step", gram_params=None,
                 diagnostics=lambda: True):
        if solve_per not in ("step", "micro_batch"):
            raise ValueError(f"solve_per must be 'step' or 'micro_batch', got {solve_per!r}")
        super().__init__(params, weights, method, c, names)
        self.solve_per, self.wants_diagnostics = solve_per, diagnostics
        self.gram_params = list(gram_params) if gram_params else None
        self.sharded = any(isinstance(p, DTensor) for p in self.params)
        self.direction = None  # (n,): d, while micro-batch directions are summed
        self._reset()

    def _reset(self):
        self.count = 0
        self.per_objective = None  # this step's path, fixed by its first micro-batch
        self.diagnostic_sums = {}

    def backward(self, losses):
        if len(losses) != len(self.weights):
            raise ValueError(f"got {len(losses)} losses for {len(self.weights)} weights")
        if self.per_objective is None:
            self.per_objective = self.method not in WEIGHTED_LOSS_METHODS or self.wants_diagnostics()
        if self.gram_params is not None:
            self._subset_gram_backward(losses)
            self.count += 1
        elif not self.per_objective:  # DPO-LW and AMoPO: d = g0, one backward, accumulated in .grad
            (self.weights.to(losses) @ losses).backward()
            self.count += 1
        else:
            super().backward(losses)  # one backward per objective into G, as in one process
            if self.solve_per == "micro_batch":
                a, diagnostics = self.solve(self.G)
                if self.direction is None:
                    self.direction = torch.zeros_like(self.G[0])
                self.direction.addmv_(self.G.T, a.to(self.G))
                self.G.zero_()
                self._add_diagnostics(diagnostics)

    def _subset_gram_backward(self, losses):
        """H from the gradients of gram_params only (autograd walks back just as far as they are), then one full
        backward of sum_i a_i L_i."""
        grads = [torch.autograd.grad(losses[i], self.gram_params, retain_graph=True, materialize_grads=True)
                 for i in range(len(losses))]
        G = torch.stack([torch.cat([g.reshape(-1) for g in per_objective]) for per_objective in grads])
        a, diagnostics = self.solve(G)
        (a.to(losses) @ losses).backward()
        self._add_diagnostics(diagnostics)

    def _add_diagnostics(self, diagnostics):
        for key, value in diagnostics.items():
            self.diagnostic_sums[key] = self.diagnostic_sums.get(key, 0.0) + value

    def finish(self):
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        if self.per_objective and self.gram_params is None and self.solve_per == "step":
            diagnostics = super().finish()  # raco.py's, with the reductions of mean_gradients and gram below
        elif self.per_objective and self.gram_params is None:  # micro_batch: the micro-batches' directions, summed
            self.direction.div_(self.count)
            if self._replicated():
                distributed.all_reduce_mean([self.direction])
            self._point_grads_at(self.direction)  # line 8 is the optimizer's step on .grad = d
            self.direction = None  # .grad holds it now; optimizer.zero_grad(set_to_none=True) frees it
            diagnostics = {k: v / self.count for k, v in self.diagnostic_sums.items()}
        else:  # loss weighting or the subset Gram: the direction is in .grad already, summed over micro-batches
            grads = [p.grad for p in self.params if p.grad is not None]
            torch._foreach_div_(grads, float(self.count))
            if self._replicated():
                distributed.all_reduce_mean(grads)
            diagnostics = {k: v / self.count for k, v in self.diagnostic_sums.items()}
        self._reset()
        return diagnostics

    def _replicated(self):
        return distributed.world_size() > 1 and not self.sharded

    def mean_gradients(self):
        G = super().mean_gradients()
        if self._replicated():
            distributed.all_reduce_mean([G])
        return G

    def gram(self, G):
        H = super().gram(G)
        if self.sharded:  # FSDP: each process holds a shard of every g_i; H is the sum of the shards' Gram matrices
            dist.all_reduce(H)
        return H

    def _local(self, param):
        return param.to_local() if isinstance(param, DTensor) else param

    def _as_grad(self, param, view):
        """Under FSDP2 .grad is a DTensor over this process's shard (its reduce-scatter adds into it in place)."""
        if not isinstance(param, DTensor):
            return view
        return DTensor.from_local(view, param.device_mesh, param.placements, shape=param.shape, stride=param.stride())
