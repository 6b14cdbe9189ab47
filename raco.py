"""From m losses on one forward graph to one update direction in `.grad`.

The training loop computes the m per-objective losses (one DPO loss per objective, all on the same response
pairs, so one forward pass serves them all) and hands them to `MultiObjectiveBackward`. It runs one backward pass
per objective, moves each gradient g_i into row i of a preallocated (m, n) buffer G, forms the m x m Gram matrix
H = G G^T in a few large matrix products, asks cagrad.coefficients for a, and writes d = a^T G into `.grad`, so that
any torch optimizer (AdamW in train.py) steps on it. Every method goes through here: only the map (H, w) -> a
differs. DPO-LW and AMoPO need no per-objective gradients (their direction is the gradient of the weighted loss),
so they take one backward pass of sum_i w_i L_i, and the per-objective path only on steps that log diagnostics.

Several processes (torchrun), two ways:
- replicated (no --fsdp): every process holds the whole model and the gradients of its own micro-batches. The
  model is not wrapped in DDP (whose hooks would all-reduce .grad after every objective's backward); the reduction
  is explicit: the per-objective gradients before the solve ("step"), or the solved directions ("micro_batch").
- sharded (--fsdp, PyTorch's FSDP2): each process holds a shard of every parameter, and FSDP reduce-scatters each
  objective's backward into the shard's .grad, averaged over processes. The algorithm is the same over shards: G
  holds this process's shard of every g_i, H is the sum over processes of each shard's G G^T (one all-reduce of m x m
  numbers), and d = a^T G is formed shard by shard. Under FSDP "micro_batch" therefore solves on each micro-batch
  of all processes together (world_size x batch_size pairs), as the reduce-scatter has already averaged them.
"""

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from cagrad import coefficients

WEIGHTED_LOSS_METHODS = ("lw",)  # d = g0 = grad sum_i w_i L_i: one backward pass, no Gram matrix needed


def local_part(tensor):
    """A process's own part of a tensor: the local shard of an FSDP2 DTensor, else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def gram(G, chunk=1 << 22):
    """H = G G^T, (m, m) float64, for stacked flat gradients G (m, n), a block of columns at a time.

    float64 keeps the inner products of float32 or bf16 gradients exact (antiparallel gradients cancel in H), and
    converting one block at a time never holds a float64 copy of all of G: a few large products per step.
    """
    H = torch.zeros(len(G), len(G), dtype=torch.float64, device=G.device)
    for block in G.split(chunk, dim=1):
        block = block.double()
        H += block @ block.T
    return H


def _replicas():
    """Processes that each hold whole gradients of their own data (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_mean(tensors):
    for t in tensors:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())


class MultiObjectiveBackward:
    """Accumulates micro-batches and writes the combined direction into `.grad`.

    Use: for each micro-batch call `backward(losses, diagnostics)`; then `diagnostics = finish()`; then
    `optimizer.step()`. diagnostics=True asks for the Gram-matrix diagnostics (gradient norms, cosines) from a
    loss-weighting method, which then takes the per-objective path for this step; the other methods always do.

    solve_per chooses where the dual is solved under gradient accumulation:
      "step" (default): accumulate each objective's gradient over the micro-batches (and processes), then solve once
          on the averaged gradients. This is Algorithm 1 as analysed: the dual is solved on the minibatch
          gradients g_i that the theory speaks of, and a 64-pair minibatch gives far less noisy g_i (and Gram
          matrix) than a 2-pair micro-batch.
      "micro_batch": solve on every micro-batch's own gradients and average the resulting directions over
          micro-batches (and processes). This is what the authors' code does. With one micro-batch per step both
          modes coincide.
    gram_params (optional, the subset-Gram step): form H from the gradients of these parameters only (e.g. the last
      K blocks: a partial backward per objective), solve for a, then run one full backward of sum_i a_i L_i. Solved
      per micro-batch; not under FSDP.
    Memory: G is m x (trainable parameters, or this process's shard) in the parameters' dtype (float32 master
    weights in train.py), allocated on the first per-objective step; backward accumulates into it in place, and the
    direction d is the one vector that DPO-LW's .grad would be.
    """

    def __init__(self, params, weights, method="raco", c=0.4, solve_per="step", names=None, gram_params=None):
        if solve_per not in ("step", "micro_batch"):
            raise ValueError(f"solve_per must be 'step' or 'micro_batch', got {solve_per!r}")
        self.params = [p for p in params if p.requires_grad]
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.method, self.c, self.solve_per = method, c, solve_per
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.weights))]
        self.gram_params = list(gram_params) if gram_params else None
        self.sharded = any(isinstance(p, DTensor) for p in self.params)
        self.buffers = None  # (m, n): row i holds g_i (this process's shard of it under FSDP)
        self.direction = None  # (n,): d, while micro-batch directions are summed
        self._reset()

    def _reset(self):
        self.count = 0
        self.per_objective = None  # this step's path, fixed by its first micro-batch
        self.diagnostic_sums = {}

    def _allocate(self):
        shards = [local_part(p) for p in self.params]
        dtypes = {s.dtype for s in shards}
        if len(dtypes) != 1:  # backward accumulates into views of one buffer: it must be the gradients' own dtype
            raise ValueError(f"trainable parameters of several dtypes ({sorted(map(str, dtypes))}); cast them to one")
        self.buffers = torch.zeros(len(self.weights), sum(s.numel() for s in shards), dtype=dtypes.pop(),
                                   device=shards[0].device)
        offsets = [0]
        for s in shards:
            offsets.append(offsets[-1] + s.numel())
        self._slices = [(start, end, s.shape) for start, end, s in zip(offsets, offsets[1:], shards)]

    def _point_grads_at(self, flat):
        """Make every parameter's .grad a view of the flat buffer, so that backward accumulates into it in place
        (FSDP's reduce-scatter adds into an existing sharded .grad the same way): no gradient is copied."""
        for param, (start, end, shape) in zip(self.params, self._slices):
            view = flat[start:end].view(shape)
            param.grad = DTensor.from_local(view, param.device_mesh, param.placements, shape=param.shape,
                                            stride=param.stride()) if isinstance(param, DTensor) else view

    def backward(self, losses, diagnostics=False):
        """Add one micro-batch: losses is the (m,) vector of per-objective losses on a shared graph."""
        if len(losses) != len(self.weights):
            raise ValueError(f"got {len(losses)} losses for {len(self.weights)} weights")
        if self.per_objective is None:
            self.per_objective = self.method not in WEIGHTED_LOSS_METHODS or diagnostics
        self.count += 1
        if self.gram_params is not None:
            self._subset_gram_backward(losses)
        elif not self.per_objective:  # DPO-LW and AMoPO: d = g0, one backward, accumulated in .grad
            (self.weights.to(losses) @ losses).backward()
        else:
            if self.buffers is None:
                self._allocate()
            for i in range(len(losses)):  # Algorithm 1, line 2: g_i, one backward pass per objective on one graph
                self._point_grads_at(self.buffers[i])
                losses[i].backward(retain_graph=i < len(losses) - 1)
            if self.solve_per == "micro_batch":
                a, diagnostics = self._solve(self.buffers, reduce_gram=self.sharded)
                if self.direction is None:
                    self.direction = torch.zeros_like(self.buffers[0])
                self.direction.addmv_(self.buffers.T, a.to(self.buffers))
                self.buffers.zero_()
                self._add_diagnostics(diagnostics)

    def _subset_gram_backward(self, losses):
        """H from the gradients of gram_params only (autograd walks back just as far as they are), then one full
        backward of sum_i a_i L_i."""
        m = len(losses)
        grads = [torch.autograd.grad(losses[i], self.gram_params, retain_graph=True, materialize_grads=True)
                 for i in range(m)]
        G = torch.stack([torch.cat([g.reshape(-1) for g in per_objective]) for per_objective in grads])
        a, diagnostics = self._solve(G, reduce_gram=False)
        (a.to(losses) @ losses).backward()
        self._add_diagnostics(diagnostics)

    def _add_diagnostics(self, diagnostics):
        for key, value in diagnostics.items():
            self.diagnostic_sums[key] = self.diagnostic_sums.get(key, 0.0) + value

    def finish(self):
        """Write the step's direction into `.grad` and return its diagnostics (floats, keyed for logging)."""
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        replicated = _replicas() > 1 and not self.sharded
        if self.gram_params is not None or not self.per_objective:  # the direction is already in .grad, summed
            grads = [p.grad for p in self.params if p.grad is not None]
            torch._foreach_div_(grads, float(self.count))
            if replicated:
                _all_reduce_mean(grads)
            diagnostics = {k: v / self.count for k, v in self.diagnostic_sums.items()}
        elif self.solve_per == "step":
            self.buffers.div_(self.count)
            if replicated:
                _all_reduce_mean([self.buffers])
            a, diagnostics = self._solve(self.buffers, reduce_gram=self.sharded)
            self.direction = torch.mv(self.buffers.T, a.to(self.buffers))  # lines 6-7: d = sum_i a_i g_i
            self.buffers.zero_()
        else:
            self.direction.div_(self.count)
            if replicated:
                _all_reduce_mean([self.direction])
            diagnostics = {k: v / self.count for k, v in self.diagnostic_sums.items()}
        if self.per_objective and self.gram_params is None:
            self._point_grads_at(self.direction)  # line 8 is the optimizer's step on .grad = d
            self.direction = None  # .grad holds it now; optimizer.zero_grad(set_to_none=True) frees it
        self._reset()
        return diagnostics

    def _solve(self, G, reduce_gram):
        """Gram matrix -> coefficients a (m,) float64, with the diagnostics. A non-finite H (a gradient overflowed)
        gives a = w, so that the non-finite direction reaches the training loop's guard rather than the solver."""
        H = gram(G)
        if reduce_gram:  # FSDP: each process holds a shard of every g_i; H is the sum of the shards' Gram matrices
            dist.all_reduce(H)
        if not torch.isfinite(H).all():
            return self.weights.clone(), {}
        a, info = coefficients(H, self.weights, self.method, self.c)
        return a, self._flatten(a, info)

    def _flatten(self, a, info):
        out = {"g0_norm": info["g0_norm"], "direction_norm": info["direction_norm"]}
        for i, name in enumerate(self.names):
            out[f"a/{name}"] = a[i].item()
            out[f"grad_norm/{name}"] = info["grad_norms"][i].item()
            for key in ("p", "p_clipped"):
                if key in info:
                    out[f"{key}/{name}"] = info[key][i].item()
            for j in range(i + 1, len(self.names)):
                out[f"cos/{name}-{self.names[j]}"] = info["cosines"][i, j].item()
        for key in ("rho", "rho_clipped", "interior", "clip_changed", "cos_cagrad"):
            if key in info:
                out[key] = info[key]
        return out
