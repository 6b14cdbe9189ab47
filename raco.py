"""From m losses on one forward graph to one update direction in `.grad`.

The training loop computes the m per-objective losses (one DPO loss per objective, all on the same response
pairs, so one forward pass serves them all) and hands them to `MultiObjectiveBackward`. It takes the gradient of
each loss separately, forms the m x m Gram matrix H_ij = <g_i, g_j> without ever concatenating the gradients into
one flat vector, asks cagrad.coefficients for a, and writes d = sum_i a_i g_i into each parameter's `.grad`, so
that any torch optimizer (AdamW in train.py) steps on it. Every method, RACO and the baselines alike, goes
through here: only the map (H, w) -> a differs.

Multi-GPU: launched with torchrun, each process runs this on its own micro-batches and the reduction is explicit
(an all-reduce of the per-objective gradients or of the direction). The model is deliberately *not* wrapped in
DistributedDataParallel: DDP reduces `.grad` inside `loss.backward()`, and `torch.autograd.grad` never calls it.
"""

import torch
import torch.distributed as dist

from cagrad import coefficients


def per_objective_grads(losses, params):
    """Algorithm 1, line 2: g_i = dL_i / dtheta for each of the m losses, which share one graph: retain it for all
    but the last.

    losses: (m,) tensor or sequence of scalars. Returns m lists of tensors shaped like params (zeros for a
    parameter an objective does not reach).
    """
    m = len(losses)
    return [list(torch.autograd.grad(losses[i], params, retain_graph=i < m - 1, materialize_grads=True))
            for i in range(m)]


def gram(grads):
    """H_ij = <g_i, g_j> in float64, accumulated parameter by parameter: (m, m).

    Stacking one parameter's m gradients and multiplying costs m x (that parameter's size) extra memory at a
    time, never a flat copy of the whole model's gradients; float64 keeps bf16 gradients' inner products exact.
    """
    m = len(grads)
    H = torch.zeros(m, m, dtype=torch.float64, device=grads[0][0].device)
    for per_param in zip(*grads):
        stacked = torch.stack([g.reshape(-1) for g in per_param]).double()
        H += stacked @ stacked.T
    return H.cpu()


def combine(grads, a):
    """d = sum_i a_i g_i, parameter by parameter (summed in at least float32, cast back to the gradient's dtype)."""
    a = a.tolist()
    return [sum(a_i * g.to(torch.promote_types(g.dtype, torch.float32)) for a_i, g in zip(a, per_param))
            .to(per_param[0].dtype) for per_param in zip(*grads)]


def _all_reduce_mean(tensors):
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)
            t.div_(dist.get_world_size())


class MultiObjectiveBackward:
    """Accumulates micro-batches and writes the combined direction into `.grad`.

    Use: for each micro-batch call `backward(losses)`; then `diagnostics = finish()`; then `optimizer.step()`.

    solve_per chooses where the dual is solved under gradient accumulation:
      "step" (default): accumulate each objective's gradient over the micro-batches (and devices), then solve once
          on the averaged gradients. This is Algorithm 1 as analysed: the dual is solved on the minibatch
          gradients g_i that the theory speaks of, and a 64-pair minibatch gives far less noisy g_i (and Gram
          matrix) than a 2-pair micro-batch. It costs m extra gradient buffers for the whole step.
      "micro_batch": solve on every micro-batch's own gradients and average the resulting directions over
          micro-batches (and devices). This is what the authors' code does; it needs no extra buffers beyond the
          m gradients of the current micro-batch. With one micro-batch per step both modes coincide.
    """

    def __init__(self, params, weights, method="raco", c=0.4, solve_per="step", names=None):
        if solve_per not in ("step", "micro_batch"):
            raise ValueError(f"solve_per must be 'step' or 'micro_batch', got {solve_per!r}")
        self.params = [p for p in params if p.requires_grad]
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.method, self.c, self.solve_per = method, c, solve_per
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.weights))]
        self._reset()

    def _reset(self):
        self.count = 0
        self.accumulated = None      # "step": m lists of summed gradients; "micro_batch": the summed direction
        self.diagnostic_sums = {}

    def backward(self, losses):
        """Add one micro-batch: losses is the (m,) vector of per-objective losses on a shared graph."""
        if len(losses) != len(self.weights):
            raise ValueError(f"got {len(losses)} losses for {len(self.weights)} weights")
        grads = per_objective_grads(losses, self.params)
        if self.solve_per == "step":
            if self.accumulated is None:
                self.accumulated = grads
            else:
                for acc, new in zip(self.accumulated, grads):
                    torch._foreach_add_(acc, new)
        else:
            direction, diagnostics = self._solve(grads)
            if self.accumulated is None:
                self.accumulated = direction
            else:
                torch._foreach_add_(self.accumulated, direction)
            for key, value in diagnostics.items():
                self.diagnostic_sums[key] = self.diagnostic_sums.get(key, 0.0) + value
        self.count += 1

    def finish(self):
        """Write the step's direction into `.grad` and return its diagnostics (floats, keyed for logging)."""
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        if self.solve_per == "step":
            for per_objective in self.accumulated:
                torch._foreach_div_(per_objective, float(self.count))
                _all_reduce_mean(per_objective)
            direction, diagnostics = self._solve(self.accumulated)
        else:
            direction = self.accumulated
            torch._foreach_div_(direction, float(self.count))
            _all_reduce_mean(direction)
            diagnostics = {k: v / self.count for k, v in self.diagnostic_sums.items()}
        for param, d in zip(self.params, direction):  # line 8 is the optimizer's step on .grad = d
            param.grad = d.to(param.dtype)
        self._reset()
        return diagnostics

    def _solve(self, grads):
        """Gram matrix -> coefficients -> direction, with the step's diagnostics."""
        a, info = coefficients(gram(grads), self.weights, self.method, self.c)
        direction = combine(grads, a)
        return direction, self._flatten(a, info)

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
        for key in ("rho", "rho_clipped"):
            if key in info:
                out[key] = info[key]
        return out
