"""From m losses on one forward pass to one update direction in `.grad`: lines 2-7 of Algorithm 1.

The training loop runs the policy once over both responses of every pair of a micro-batch, which gives the log-prob
log pi(y|x) of each response (dpo.py), and computes the m per-objective DPO losses from them. It hands both to
`MultiObjectiveBackward`:

    backward(losses, logps)  line 2: one backward pass per objective, each into row i of a preallocated (m, n) buffer G
    finish()                 lines 3-7: H = G G^T (m x m), a = cagrad.coefficients(H, w), d = a^T G written into .grad

so that any torch optimizer (AdamW in train.py) takes line 8's step on d. Every method goes through here; only the
map (H, w) -> a differs (cagrad.py). This is the algorithm as one process runs it; harness/scale.py composes the same
steps (mean_gradients, solve, write_direction) with what runs at scale need.
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


def objective_cotangents(losses, logps):
    """c (m, R): c[i, r] = dL_i / d log pi(y_r|x), how much objective i weighs response r's log-prob gradient.

    Every loss reads the responses only through their log-probs (dpo.py), so by the chain rule
    g_i = sum_r c[i, r] grad log pi(y_r|x): the m gradients are m weightings of the same R vectors (docs/method.md,
    section 2). c comes from the losses' own small graph above the log-probs, not from a pass through the model."""
    return torch.stack([torch.autograd.grad(loss, logps, retain_graph=True)[0] for loss in losses])


def check_losses(losses, weights):
    """One loss per weight, or a ValueError saying how many of each."""
    if len(losses) != len(weights):
        raise ValueError(f"got {len(losses)} losses for {len(weights)} weights")


def gradient_rows(tensors, m):
    """A zero (m, n) buffer whose rows hold one flat gradient of `tensors` each, in their (single) dtype."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:  # backward accumulates into views of one buffer: it must be the gradients' own dtype
        raise ValueError(f"trainable parameters of several dtypes ({sorted(map(str, dtypes))}); cast them to one")
    return torch.zeros(m, sum(t.numel() for t in tensors), dtype=dtypes.pop(), device=tensors[0].device)


def flat_views(flat, tensors):
    """Views of the flat buffer shaped like each of `tensors`, in order (no copy)."""
    views, start = [], 0
    for t in tensors:
        views.append(flat[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return views


class MultiObjectiveBackward:
    """The m per-objective gradients of a step, combined into one direction in `.grad`.

    Use: for each micro-batch `backward(losses, logps)`; then `diagnostics = finish()`; then `optimizer.step()`.
    Micro-batches accumulate: each objective's gradient is averaged over them and the dual is solved once, on the
    minibatch gradients g_i that Algorithm 1 and its analysis speak of (a 64-pair minibatch gives far less noisy g_i,
    and Gram matrix, than a 2-pair micro-batch).
    Memory: G is m x (trainable parameters) in the parameters' dtype (float32 master weights in train.py), allocated
    at the first backward. Backward accumulates into it in place (each .grad is a view of a row), so no gradient is
    copied, and the direction d is the one vector that plain DPO's .grad would be.
    """

    def __init__(self, params, weights, method="raco", c=0.4, names=None):
        self.params = [p for p in params if p.requires_grad]
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # w, on the simplex
        self.method, self.c = method, c
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.weights))]
        self.G = None  # (m, n): row i holds g_i, summed over this step's micro-batches
        self.count = 0  # micro-batches since the last finish()

    def backward(self, losses, logps):
        """Add one micro-batch. losses: (m,) per-objective losses; logps: (R,) the log-probs of the micro-batch's
        responses (both of every pair), which the losses read, and through which alone they reach the model."""
        check_losses(losses, self.weights)
        if self.G is None:
            self.G = gradient_rows(self.params, len(self.weights))
        cotangents = objective_cotangents(losses, logps)
        for i in range(len(losses)):  # Algorithm 1, line 2: g_i = sum_r c_ir grad log pi(y_r), one backward pass each
            for param, view in zip(self.params, flat_views(self.G[i], self.params)):
                param.grad = view  # backward accumulates into row i in place
            logps.backward(cotangents[i], retain_graph=i < len(losses) - 1)
        self.count += 1

    def finish(self):
        """Write the step's direction into `.grad` and return its diagnostics (floats, keyed for logging)."""
        G = self.mean_gradients()  # the minibatch gradients g_i
        a, diagnostics = self.solve(gram(G))  # lines 3-7, on H = G G^T (cagrad.raco_direction)
        self.write_direction(torch.mv(G.T, a.to(G)))  # d = sum_i a_i g_i; line 8 is the optimizer's step on it
        return diagnostics

    def mean_gradients(self):
        """G averaged over the step's micro-batches, in place; the count starts again."""
        if self.count == 0:
            raise RuntimeError("finish() called before any backward()")
        G, self.count = self.G.div_(self.count), 0
        return G

    def solve(self, H):
        """Gram matrix -> coefficients a (m,) float64, with the diagnostics. A non-finite H (a gradient overflowed)
        gives a = w, so that the non-finite direction reaches the training loop's guard rather than the solver."""
        if not torch.isfinite(H).all():
            return self.weights.clone(), {}
        a, info = coefficients(H, self.weights, self.method, self.c)
        return a, self.flatten(a, info)

    def write_direction(self, direction):
        """.grad = d, each parameter's a view of the flat direction; G is cleared for the next step."""
        self.G.zero_()
        for param, view in zip(self.params, flat_views(direction, self.params)):
            param.grad = view

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
