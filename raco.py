"""From m losses on one forward graph to one update direction in `.grad`: lines 2-7 of Algorithm 1.

The training loop computes the m per-objective losses (one DPO loss per objective, all on the same response pairs,
so one forward pass serves them all, dpo.py) and hands them to `MultiObjectiveBackward`:

    backward(losses)   line 2: one backward pass per objective, each into row i of a preallocated (m, n) buffer G
    finish()           lines 3-7: H = G G^T (m x m), a = cagrad.coefficients(H, w), d = a^T G written into .grad

so that any torch optimizer (AdamW in train.py) takes line 8's step on d. Every method goes through here; only the
map (H, w) -> a differs (cagrad.py). This is the algorithm as one process runs it. harness/scale.py extends the
same class for what runs at scale need: several processes under torchrun (replicated or FSDP2-sharded gradients),
the dual solved per micro-batch, a Gram matrix from the last blocks only, and loss weighting's single backward.
"""

import torch

from cagrad import coefficients


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


class MultiObjectiveBackward:
    """The m per-objective gradients of a step, combined into one direction in `.grad`.

    Use: for each micro-batch `backward(losses)`; then `diagnostics = finish()`; then `optimizer.step()`.
    Micro-batches accumulate: each objective's gradient is averaged over them and the dual is solved once, on the
    minibatch gradients g_i that Algorithm 1 and its analysis speak of (a 64-pair minibatch gives far less noisy g_i,
    and Gram matrix, than a 2-pair micro-batch).
    Memory: G is m x (trainable parameters) in the parameters' dtype (float32 master weights in train.py), allocated
    at the first backward. Backward accumulates into it in place, so no gradient is copied, and the direction d is
    the one vector that plain DPO's .grad would be.
    """

    def __init__(self, params, weights, method="raco", c=0.4, names=None):
        self.params = [p for p in params if p.requires_grad]
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # w, on the simplex
        self.method, self.c = method, c
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.weights))]
        self.G = None  # (m, n): row i holds g_i, summed over this step's micro-batches
        self.count = 0  # micro-batches since the last finish()

    def backward(self, losses):
        """Add one micro-batch: losses is the (m,) vector of per-objective losses on one shared graph."""
        if len(losses) != len(self.weights):
            raise ValueError(f"got {len(losses)} losses for {len(self.weights)} weights")
        if self.G is None:
            self.G = self._allocate()
        for i in range(len(losses)):  # Algorithm 1, line 2: g_i, one backward pass per objective on one graph
            self._point_grads_at(self.G[i])
            losses[i].backward(retain_graph=i < len(losses) - 1)
        self.count += 1

    def finish(self):
        """Write the step's direction into `.grad` and return its diagnostics (floats, keyed for logging)."""
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        G = self.mean_gradients()  # the minibatch gradients g_i
        a, diagnostics = self.solve(G)  # lines 3-7, on H = G G^T (cagrad.raco_direction)
        direction = torch.mv(G.T, a.to(G))  # d = sum_i a_i g_i
        G.zero_()
        self._point_grads_at(direction)  # line 8 is the optimizer's step on .grad = d
        self.count = 0
        return diagnostics

    def mean_gradients(self):
        """G averaged over the step's micro-batches, in place."""
        return self.G.div_(self.count)

    def gram(self, G):
        """H = G G^T."""
        return gram(G)

    def solve(self, G):
        """Gram matrix -> coefficients a (m,) float64, with the diagnostics. A non-finite H (a gradient overflowed)
        gives a = w, so that the non-finite direction reaches the training loop's guard rather than the solver."""
        H = self.gram(G)
        if not torch.isfinite(H).all():
            return self.weights.clone(), {}
        a, info = coefficients(H, self.weights, self.method, self.c)
        return a, self.flatten(a, info)

    def _local(self, param):
        """The part of a parameter this process's gradient buffer holds: all of it here (a shard under FSDP)."""
        return param

    def _allocate(self):
        parts = [self._local(p) for p in self.params]
        dtypes = {s.dtype for s in parts}
        if len(dtypes) != 1:  # backward accumulates into views of one buffer: it must be the gradients' own dtype
            raise ValueError(f"trainable parameters of several dtypes ({sorted(map(str, dtypes))}); cast them to one")
        offsets = [0]
        for s in parts:
            offsets.append(offsets[-1] + s.numel())
        self._slices = [(start, end, s.shape) for start, end, s in zip(offsets, offsets[1:], parts)]
        return torch.zeros(len(self.weights), offsets[-1], dtype=dtypes.pop(), device=parts[0].device)

    def _point_grads_at(self, flat):
        """Make every parameter's .grad a view of the flat buffer, so that backward accumulates into it in place:
        no gradient is copied."""
        for param, (start, end, shape) in zip(self.params, self._slices):
            param.grad = self._as_grad(param, flat[start:end].view(shape))

    def _as_grad(self, param, view):
        return view

    def flatten(self, a, info):
        """The coefficients and cagrad's diagnostics as floats keyed by objective name, for metrics.jsonl."""
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
