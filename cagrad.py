"""Conflict-averse combination of per-objective gradients, on the m x m Gram matrix alone.

Every method in this project is a map (H, w) -> a, where H[i, j] = <g_i, g_j> is the Gram matrix of the m
per-objective gradients, w the user's weights on the simplex, and the update direction is d = sum_i a[i] * g_i.
No model is in sight here: the functions take an (m, m) matrix and return m numbers, so they can be checked
against brute force in microseconds and reused by the toy, the tests and the training loop alike.

RACO's step (Algorithm 1, "CAGrad-Clip"; `raco_direction` is its lines 3-7 in order), in the paper's symbols:
    g0   = sum_i w_i g_i                                  (the gradient of the weighted loss L_w)
    p    = argmin_{p in simplex} Phi(p) = G_p . g0 + c ||g0|| ||G_p||,    G_p = sum_i p_i g_i
    p~   = min(p, w)                                      (the clip; no renormalisation, so sum p~ <= 1)
    G~   = sum_i p~_i g_i
    d    = g0 + c ||g0|| G~ / ||G~||
On the Gram matrix, with b = H w (b_i = <g_i, g0>) and s = c sqrt(w^T H w):
    Phi(p) = b^T p + s sqrt(p^T H p)     and     a = w + s p~ / sqrt(p~^T H p~).
The solution is invariant to H -> k H (k > 0), so H is divided by its trace before solving: the same answer comes
out for gradients of norm 1e-15 (typical of LLM losses) and 1e15 (a solver that compares coefficients with an
absolute 1e-12, as the authors' does, silently falls back to a vertex for small gradients). For the same reason no
threshold below is absolute: gradient norms 1e6 apart within one H are ordinary too. The dual is solved exactly for
any m: in closed form for m = 2 (`solve_dual_two`), by Wolfe's active-set method beyond (dual_solver.py).

The file reads in the order of Algorithm 1 (arXiv 2602.02495; docs/method.md derives every step): the dual in
closed form, the clip, `raco_direction` (lines 3-7), then the baselines, then `coefficients`, which every caller
uses (it checks its input and picks the method), then the `diagnostics` that train.py logs.
"""

import math

import numpy as np
import torch

from dual_solver import ROUNDING, wolfe_active_set

METHODS = ("lw", "cagrad", "raco", "mgda", "pcgrad")


def phi(H, b, s, p):
    """The CAGrad dual objective Phi(p) = b^T p + s sqrt(p^T H p); all numpy float64."""
    return float(b @ p + s * math.sqrt(max(float(p @ H @ p), 0.0)))


def _length(H, x):
    """||sum_i x_i g_i|| from the Gram matrix, and exactly 0 where the combination cancels down to rounding noise."""
    squared = float(x @ H @ x)
    scale = float(np.abs(x) @ np.sqrt(np.clip(np.diag(H), 0.0, None))) ** 2
    return math.sqrt(squared) if squared > ROUNDING * scale else 0.0


def solve_dual_two(H, b, s):
    """Closed-form argmin of Phi over the 2-simplex, p = (lam, 1 - lam) (docs/method.md derives it).

    Q(lam) = q2 lam^2 + q1 lam + q0 = ||G_p||^2 and h(lam) = b_2 + delta lam + s sqrt(Q(lam)). Setting h' = 0 and
    squaring gives a quadratic in lam; its real roots in [0, 1], the endpoints, and the argmin of Q (where h is not
    differentiable when Q touches 0, e.g. antiparallel gradients) are the candidates. Squaring adds spurious
    roots, so the candidate with the smallest h wins; that also makes thresholds unnecessary: a candidate that
    rounding spoils loses on h, so only divisions by an exact zero are skipped.
    """
    if H[0, 0] < H[1, 1]:
        # lam = 0 is the shorter gradient: near it the optimum puts a tiny lam on the longer one, and lam keeps its
        # relative precision where 1 - lam would not (with norms 1e6 apart, lam ~ 1e-12 carries the direction).
        return solve_dual_two(H[::-1, ::-1], b[::-1], s)[::-1].copy()
    delta = b[0] - b[1]
    q2 = H[0, 0] + H[1, 1] - 2.0 * H[0, 1]
    q1 = 2.0 * (H[0, 1] - H[1, 1])
    q0 = H[1, 1]
    candidates = [0.0, 1.0]
    if q2 > 0.0:
        candidates.append(-q1 / (2.0 * q2))
    # (delta^2 q2 - s^2 q2^2) lam^2 + (delta^2 q1 - s^2 q1 q2) lam + delta^2 q0 - s^2 q1^2 / 4 = 0
    A = delta**2 * q2 - s**2 * q2**2
    B = delta**2 * q1 - s**2 * q1 * q2
    C = delta**2 * q0 - s**2 * q1**2 / 4.0
    disc = B * B - 4.0 * A * C
    if disc >= 0.0:
        # the stable quadratic formula: the roots are q / A and C / q, with no cancellation in q
        q = -(B + math.copysign(math.sqrt(disc), B)) / 2.0
        candidates += [q / A] if A != 0.0 else []
        candidates += [C / q] if q != 0.0 else []

    def h(lam):
        return b[1] + delta * lam + s * math.sqrt(max(q2 * lam * lam + q1 * lam + q0, 0.0))

    lam = min((x for x in candidates if 0.0 <= x <= 1.0), key=h)
    return np.array([lam, 1.0 - lam])


def solve_dual(H, b, s):
    """argmin_{p in simplex} b^T p + s sqrt(p^T H p) for any m, with b = H w for some w (so that Phi = 0 wherever
    G_p = 0). m = 2: closed form. s = 0: Phi is linear, a vertex. Else Wolfe's exact active-set method."""
    m = len(H)
    if m == 1:
        return np.ones(1)
    if m == 2:
        return solve_dual_two(H, b, s)
    if s == 0.0:
        return np.eye(m)[np.argmin(b)]
    return wolfe_active_set(H, b, s)


def clip_to_weights(p, w):
    """Step 5 of Algorithm 1: p~ = min(p, w) elementwise, deliberately *not* renormalised (sum p~ <= 1)."""
    return np.minimum(p, w)


def raco_direction(H, w, c, clip=True):
    """Algorithm 1 of the paper ("RACO with CAGrad-Clip"), lines 3-7, on the Gram matrix: the coefficients a of
    d = sum_i a_i g_i. clip=False skips line 5, which is CAGrad (Liu et al. 2021) without any rescaling.

    H: (m, m) float64 numpy Gram matrix H_ij = <g_i, g_j>, normalised (trace 1; see coefficients); w: (m,) weights on
    the simplex; 0 <= c < 1. Returns (a, p, p_tilde): coefficients, dual solution and clipped dual, each (m,).
    Lines 1-2 (the minibatch, the losses L_i and gradients g_i) are train.py's and raco.py's; line 8 (the step on d)
    is the optimizer's.
    """
    b = H @ w                                                # line 3: g0 = sum_i w_i g_i, via b_i = <g_i, g0>
    s = c * _length(H, w)                                    # line 4: the radius c ||g0|| ...
    p = solve_dual(H, b, s)                                  # line 4: ... and p = argmin_simplex b^T p + s ||G_p||
    p_tilde = clip_to_weights(p, w) if clip else p           # line 5: p~ = min(p, w), not renormalised
    norm_tilde = _length(H, p_tilde)                         # line 6: ||G~||, G~ = sum_i p~_i g_i
    if s == 0.0 or norm_tilde == 0.0:                        # line 7 when ||g0|| = 0, c = 0 or G~ = 0: d = g0
        return w.copy(), p, p_tilde
    return w + s * p_tilde / norm_tilde, p, p_tilde          # line 7: d = g0 + c ||g0|| G~ / ||G~||


# ----------------------------------------------------------------------------- the baselines

def _pcgrad(H, w):
    """PCGrad (Yu et al. 2020) as coefficients: g_i^PC = g_i minus its projections onto the g_j it conflicts with.

    Each projection subtracts a multiple of some g_j, so g_i^PC = sum_k C[i, k] g_k and every inner product
    <g_i^PC, g_j> = C[i] . H[:, j] comes from the Gram matrix. The original shuffles the order of j per step; we
    use the fixed cyclic order i+1, i+2, ... so a step is reproducible. User weights scale the *projected*
    gradients, d = sum_i w_i g_i^PC: with no conflict this is exactly DPO-LW.
    """
    m = len(H)
    C = np.eye(m)
    for i in range(m):
        for j in [(i + k) % m for k in range(1, m)]:
            inner = C[i] @ H[:, j]
            if inner < 0.0 and H[j, j] > 0.0:  # only an exactly zero g_j is skipped: a tiny one still conflicts
                C[i, j] -= inner / H[j, j]
    return w @ C


def _mgda(H):
    """MGDA (Sener & Koltun 2018): the min-norm point of the convex hull of the g_i, i.e. the dual with b = 0, s = 1;
    uniform where every gradient is zero. It ignores the weights on purpose."""
    return solve_dual(H, np.zeros(len(H)), 1.0) if np.trace(H) > 0 else np.full(len(H), 1.0 / len(H))


# ----------------------------------------------------------------------------- the one entry point

def check_arguments(w, method, c):
    """What every caller must pass: weights on the simplex, a known method, 0 <= c < 1 (ValueError otherwise)."""
    w = np.asarray(w, dtype=np.float64)
    if (w < 0).any() or abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must be >= 0 and sum to 1, got {w.tolist()}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0.0 <= c < 1.0:
        raise ValueError(f"c must be in [0, 1), got {c}")


def coefficients(H, w, method="raco", c=0.4):
    """Map the Gram matrix of m per-objective gradients to the coefficients of the update direction.

    H: (m, m) symmetric PSD tensor or array (any float dtype), H[i, j] = <g_i, g_j>
    w: length-m user weights on the simplex (sequence or tensor)
    method:
      "lw"     DPO-LW, loss weighting: a = w, d = g0.
      "cagrad" CAGrad (Liu et al. 2021): Algorithm 1 without the clip, no rescaling.
      "raco"   RACO, CAGrad-Clip: Algorithm 1 with p~ = min(p, w). c = 0 gives a = w for both.
      "mgda"   MGDA (Sener & Koltun 2018): a = the min-norm point of the convex hull of the g_i. It ignores w on
               purpose: it finds *a* Pareto-critical point, not the one the weights ask for, which is exactly the
               contrast the toy and the Pareto sweep show.
      "pcgrad" PCGrad (Yu et al. 2020): projected gradients, weighted by w after the surgery (see _pcgrad).
    c: the CAGrad radius, 0 <= c < 1 (used by cagrad and raco).
    Returns (a, info): a is an (m,) float64 tensor with d = sum_i a[i] g_i; info holds the dual "p" (cagrad, raco,
    mgda), the clipped "p_clipped" (raco) and the step's `diagnostics`. Degenerate input (all-zero H, zero or
    colinear gradients, zero weights) gives finite a; where ||g0|| = 0 or ||G~|| = 0 the step falls back to d = g0
    (a = w), as Algorithm 1 prescribes.
    """
    H = torch.as_tensor(H).detach().to("cpu", torch.float64).numpy()
    w = torch.as_tensor(w, dtype=torch.float64).detach().cpu().numpy().reshape(-1)
    if H.shape != (len(w), len(w)):
        raise ValueError(f"H must be ({len(w)}, {len(w)}) for {len(w)} weights, got {tuple(H.shape)}")
    if not np.isfinite(H).all():
        raise ValueError("H has non-finite entries (a gradient overflowed or is NaN)")
    check_arguments(w, method, c)
    H = (H + H.T) / 2.0
    a, dual = _solve(H, w, method, c)
    info = {**dual, **diagnostics(H, w, c, a, dual)}
    return torch.from_numpy(a), {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in info.items()}


def _solve(H, w, method, c):
    """The method's coefficients a and its dual ({"p"}, and {"p_clipped"} for raco), on H divided by its trace: the
    answer depends on H only up to a positive factor (scale invariance, docs/method.md section 4)."""
    trace = float(np.trace(H))
    Hn = H / trace if trace > 0 else H
    if method == "pcgrad":
        return _pcgrad(Hn, w), {}
    if method == "mgda":
        p = _mgda(Hn)
        return p.copy(), {"p": p}
    if method in ("cagrad", "raco"):
        a, p, p_tilde = raco_direction(Hn, w, c, clip=method == "raco")
        return a, {"p": p, **({"p_clipped": p_tilde} if method == "raco" else {})}
    return w.copy(), {}


# ----------------------------------------------------------------------------- diagnostics: what train.py logs

# An objective whose share of a combination sum_i p_i g_i is below this is not there, for the diagnostics: well below
# float32's rounding of the gradients (~6e-8), so that every share the gradients can carry counts, and well above
# float64's (~1e-16) in which the shares are computed. A share, unlike p_i itself, is scale-free: with gradient norms
# 1e6 apart, p_i ~ 1e-12 on the longer gradient is a share of ~1e-6 and counts.
NEGLIGIBLE_SHARE = 1e-9


def _cosines(H):
    norms = np.sqrt(np.clip(np.diag(H), 0.0, None))
    outer = np.outer(norms, norms)
    return np.divide(H, outer, out=np.zeros_like(H), where=outer > 0)


def _cos(H, x, y):
    """cos(G x, G y) from the Gram matrix; 0 where either vector is zero.

    Clamped to [-1, 1]: when G x nearly cancels (||g0|| below ~1e-7 of the ||g_i||), x^T H x is a difference of
    large numbers and the ratio is rounding noise that can leave the interval."""
    denominator = math.sqrt(max(x @ H @ x, 0.0) * max(y @ H @ y, 0.0))
    return min(max(float(x @ H @ y / denominator), -1.0), 1.0) if denominator > 0 else 0.0


def shares(H, p):
    """Each objective's share of the combination sum_i p_i g_i, measured in lengths: p_i ||g_i|| / sum_j p_j ||g_j||
    (zeros where the sum is 0). Unchanged by H -> k H, and by p -> k p."""
    parts = np.abs(p) * np.sqrt(np.clip(np.diag(H), 0.0, None))
    total = parts.sum()
    return parts / total if total > 0 else np.zeros_like(parts)


def diagnostics(H, w, c, a, dual):
    """What a step's solve says about the gradients and about the clip, for logging: "cosines" (m, m) and
    "grad_norms" of the g_i, "g0_norm", "direction_norm" = ||d||; with a dual p, "rho" = cos(g0, G_p) and "interior"
    (1 if at least two objectives have a share of G_p above NEGLIGIBLE_SHARE: the dual is not a vertex); with RACO's
    clipped p~, "rho_clipped" = cos(g0, G~), "clip_changed" (1 if the clip turns the direction: p~'s shares differ
    from p's by more than NEGLIGIBLE_SHARE) and "cos_cagrad", the cosine between RACO's direction and CAGrad's on
    the same dual. Every threshold is relative (shares), so the answer is the same for H and k H."""
    info = {"cosines": _cosines(H), "grad_norms": np.sqrt(np.clip(np.diag(H), 0.0, None)),
            "g0_norm": math.sqrt(max(w @ H @ w, 0.0)), "direction_norm": math.sqrt(max(a @ H @ a, 0.0))}
    if "p" in dual:
        p = dual["p"]
        info["rho"] = _cos(H, w, p)
        info["interior"] = float((shares(H, p) > NEGLIGIBLE_SHARE).sum() > 1)
    if "p_clipped" in dual:  # when the clip matters: does it turn the direction, and how far from CAGrad's?
        p, p_tilde = dual["p"], dual["p_clipped"]
        info["rho_clipped"] = _cos(H, w, p_tilde)
        info["clip_changed"] = float(np.abs(shares(H, p_tilde) - shares(H, p)).max() > NEGLIGIBLE_SHARE)
        trace = float(np.trace(H))
        Hn = H / trace if trace > 0 else H
        s, norm_p = c * _length(Hn, w), _length(Hn, p)  # CAGrad's line 7 on the same dual, unclipped
        info["cos_cagrad"] = _cos(H, a, w + s * p / norm_p if s and norm_p else w)
    return info
