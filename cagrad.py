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
out for gradients of norm 1e-15 (typical of LLM losses) and 1e15 (the authors' solver, which compares coefficients
with an absolute 1e-12, silently falls back to a vertex for small gradients). For the same reason no threshold
below is absolute: gradient norms 1e6 apart within one H are ordinary too. The dual is solved exactly for any m:
in closed form for m = 2, by Wolfe's active-set method on the faces of the simplex beyond (`solve_dual`).
"""

import math

import numpy as np
import torch

METHODS = ("lw", "cagrad", "raco", "mgda", "pcgrad")

# Every threshold here is relative, none absolute: per-objective gradient norms 1e6 apart are ordinary in LLM
# training, and a gradient 1e-6 of the largest is small, not zero. A squared norm ||sum_i x_i g_i||^2 read off the
# Gram matrix carries a rounding error of about m * 1e-16 * (sum_i |x_i| ||g_i||)^2; below _ROUNDING times that
# scale the combination has cancelled to zero for all that H can tell (exact zeros and what rounding makes of them).
_ROUNDING = 1e-13
# The general solver works on the gradients' coordinates (_coordinates), where rounding is ~1e-16 of the norms
# involved, not of their squares: a combination shorter than _TOLERANCE times sum_i |x_i| ||g_i|| is zero, and Phi
# is compared with itself to _TOLERANCE times the size of its terms, |b|^T p + s sum_i p_i ||g_i||.
_TOLERANCE = 1e-12


def phi(H, b, s, p):
    """The CAGrad dual objective Phi(p) = b^T p + s sqrt(p^T H p); all numpy float64."""
    return float(b @ p + s * math.sqrt(max(float(p @ H @ p), 0.0)))


def clip_to_weights(p, w):
    """Step 5 of Algorithm 1: p~ = min(p, w) elementwise, deliberately *not* renormalised (sum p~ <= 1)."""
    return np.minimum(p, w)


def _length(H, x):
    """||sum_i x_i g_i|| from the Gram matrix, and exactly 0 where the combination cancels down to rounding noise."""
    squared = float(x @ H @ x)
    scale = float(np.abs(x) @ np.sqrt(np.clip(np.diag(H), 0.0, None))) ** 2
    return math.sqrt(squared) if squared > _ROUNDING * scale else 0.0


def solve_dual_two(H, b, s):
    """Closed-form argmin of Phi over the 2-simplex, p = (lam, 1 - lam) (SPEC section 2).

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


def _coordinates(H):
    """Coordinates X (m, r) of the gradients in an orthonormal basis of their span, X X^T = H: a Cholesky
    factorisation, with pivoting, of the cosine matrix, scaled back by the norms.

    The general solver works on these vectors rather than on H, which keeps it exact to rounding: a face's geometry
    then comes from differences of coordinates, not from H_jj - 2 H_jf + H_ff, where a gradient 1e-8 of the others
    is lost to rounding (normal equations against QR). Factoring cosines makes each gradient's coordinates accurate
    relative to its own norm, and a direction whose residual is rounding noise (duplicated, antiparallel or dependent
    gradients) gets no coordinate, so those degeneracies come out exact.
    """
    norms = np.sqrt(np.clip(np.diag(H), 0.0, None))
    live = np.flatnonzero(norms > 0.0)
    cosines = H[np.ix_(live, live)] / np.outer(norms[live], norms[live])
    L = np.zeros((len(live), len(live)))
    residual = np.ones(len(live))  # 1 - the squared cosines explained by the columns so far
    rank = 0
    while rank < len(live) and residual.max() > _ROUNDING:
        i = int(np.argmax(residual))
        L[:, rank] = (cosines[:, i] - L[:, :rank] @ L[i, :rank]) / math.sqrt(residual[i])
        residual -= L[:, rank] ** 2
        rank += 1
    X = np.zeros((len(H), rank))
    X[live] = norms[live, None] * L[:, :rank]
    return X


def _value(X, b, s, p):
    """Phi(p) from the coordinates: b^T p + s ||p^T X||."""
    return float(b @ p + s * np.linalg.norm(p @ X))


def _terms_size(X, b, s, p):
    """The size of Phi's terms at p, |b|^T p + s sum_i p_i ||g_i||: the scale its rounding errors are relative to."""
    return float(np.abs(b) @ p + s * np.linalg.norm(X, axis=1) @ p)


def _affine_frame(X, face):
    """Coordinates on the affine hull of a face (a sorted list of indices): p = e_f + Z y, where f is the face's
    shortest gradient and Z's columns are e_j - e_f for the others, so that G_p = x_f + D^T y, D's rows x_j - x_f.

    Returns (f, Z, frame, null). frame = (U, sigma, V, lengths), the SVD of D's rows scaled to unit length,
    D^T = U diag(sigma) V^T diag(lengths), when the differences are linearly independent; else None, with a
    direction null of Z along which G_p does not move. Independence is judged on the scaled rows, i.e. relative to
    each difference's own length: with gradient norms 1e6 apart, any absolute threshold is wrong for some.
    Putting the origin at the shortest gradient keeps the y small near it, where they keep their relative precision.
    """
    norms = np.linalg.norm(X, axis=1)
    first = min(face, key=lambda i: norms[i])
    rest = [i for i in face if i != first]
    Z = np.zeros((len(X), len(rest)))
    Z[first, :] = -1.0
    Z[rest, range(len(rest))] = 1.0
    D = X[rest] - X[first]
    lengths = np.linalg.norm(D, axis=1)
    duplicated = lengths <= _TOLERANCE * (norms[rest] + norms[first])
    if duplicated.any():
        return first, Z, None, Z[:, np.argmax(duplicated)]
    U, sigma, Vt = np.linalg.svd((D / lengths[:, None]).T)
    if len(sigma) < len(rest) or (len(rest) and sigma[-1] <= _TOLERANCE):
        return first, Z, None, Z @ (Vt[-1] / lengths)
    return first, Z, (U[:, :len(rest)], sigma, Vt.T, lengths), None


def _face_minimiser(X, b, s, face):
    """Where Phi goes on the affine hull of a face: (its minimiser, None), or (None, a direction within the hull
    along which Phi never increases). s > 0.

    In the frame p = e_f + Z y, ||G_p||^2 = q(y) = y^T M y + 2 k^T y + k0 (M = D D^T) and Phi = b_f + v^T y +
    s sqrt(q(y)), v = Z^T b. Completing the square, q = (y - y_q)^T M (y - y_q) + q_min, and Phi' = 0 gives the single
    point y = y_q - (r / s) M^-1 v with r^2 (1 - alpha / s^2) = q_min, alpha = v^T M^-1 v. Where q_min = 0 (0 lies in
    the hull, e.g. antiparallel gradients) it is the kink y_q, where G_p = 0. If alpha >= s^2 there is no minimiser:
    Phi falls (or levels off) forever along -M^-1 v, a convex function whose slope at infinity is <= 0. If the
    differences are dependent, Phi is constant along the null direction: G_p does not move, nor does b^T p = w^T H p.
    """
    first, Z, frame, null = _affine_frame(X, face)
    if frame is None:
        return None, null
    U, sigma, V, lengths = frame
    t = V.T @ (Z.T @ b / lengths) / sigma  # the projection of g0 onto the face's directions, in the basis U
    M_inv_v = V @ (t / sigma) / lengths
    if t @ t >= s * s:  # alpha = t^T t
        return None, -Z @ M_inv_v
    x_f = X[first]
    y_q = -V @ (U.T @ x_f / sigma) / lengths
    q_min = np.linalg.norm(x_f - U @ (U.T @ x_f)) ** 2
    r = math.sqrt(q_min / (1.0 - (t @ t) / (s * s)))
    return np.eye(len(X))[first] + Z @ (y_q - (r / s) * M_inv_v), None


def _descend(X, b, s, p, support):
    """From p on the face `support`, the minimiser of Phi over that face: Wolfe's minor cycle (as in his min-norm
    point algorithm). Go to the minimiser on the face's affine hull if it lies inside the face; else move towards it
    (or along the direction of decrease, or of constancy) until a coordinate reaches 0, drop that vertex, repeat.
    Phi never increases: it is convex, and the target is no worse than p."""
    while len(support) > 1:
        target, direction = _face_minimiser(X, b, s, support)
        if target is not None and target[support].min() > 0.0:
            return target, support
        if target is not None:
            direction = target - p
        shrinking = np.flatnonzero(direction < 0.0)  # not empty: the direction sums to 0, or the target has p_i <= 0
        steps = -p[shrinking] / direction[shrinking]
        p = np.maximum(p + steps.min() * direction, 0.0)
        p[shrinking[np.argmin(steps)]] = 0.0
        support = [i for i in support if p[i] > 0.0]
    return p / p.sum(), support


def _leave_kink(X, b, s, p, support):
    """At a kink, where the support's gradients cancel (G_p = 0, so Phi(p) = b^T p = w^T H p = 0): None if p is
    optimal, else a point where Phi < 0, from which descent never comes back to a kink.

    Phi is not differentiable here, so the gradient cannot tell. By duality p is optimal iff some direction
    d = g0 + s u, ||u|| <= 1, has <g_i, d> >= 0 for every i. On the support the cancellation forces d to be orthogonal
    to V = span of the support's g_i, which uses ||P_V g0||^2 = alpha of the radius s^2. What is left is the same
    problem for the other objectives, projected onto V's complement: gradients P g_j, b'_j = <P g_j, g0>, radius
    s' = sqrt(s^2 - alpha) > 0 (the kink was the hull's minimiser). Its value is >= 0 iff p is optimal. If it is
    negative at p', with x' = sum_j p'_j P g_j, then x = x' - (||x'|| / s') P_V g0 has <x, g0> + s ||x|| = Phi'(p') < 0
    as well, and x is a point of the cone of the g_i: the support's g_i span V and cancel with positive weights,
    so any part in V is a non-negative combination of them.
    """
    others = [i for i in range(len(X)) if i not in support]
    if not others:
        return None
    _, Z, (U, sigma, V, lengths), _ = _affine_frame(X, support)  # 0 is in the hull, so U spans V
    t = V.T @ (Z.T @ b / lengths) / sigma  # P_V g0 in the basis U
    X_reduced = X[others] - (X[others] @ U) @ U.T
    b_reduced = b[others] - (X[others] @ U) @ t
    in_V = np.linalg.norm(X_reduced, axis=1) <= _TOLERANCE * np.linalg.norm(X[others], axis=1)  # up to rounding
    X_reduced[in_V], b_reduced[in_V] = 0.0, 0.0
    s_reduced = math.sqrt(s * s - t @ t)  # the same alpha as _face_minimiser's, which found it below s^2
    p_reduced = _solve_active_set(X_reduced, b_reduced, s_reduced)
    escape = np.zeros(len(X))
    escape[others] = p_reduced
    if _value(X_reduced, b_reduced, s_reduced, p_reduced) >= -_TOLERANCE * _terms_size(X, b, s, escape):
        return None
    # the support's weights nu put the part of x in V at -(||x'|| / s') P_V g0 - P_V sum_j p'_j g_j (in the basis U);
    # adding a multiple of the cancelling weights p makes them non-negative without moving x
    target = -(np.linalg.norm(p_reduced @ X_reduced) / s_reduced) * t - U.T @ (p_reduced @ X[others])
    nu = Z @ (V @ (target / sigma) / lengths)
    escape += nu + max(0.0, max(-nu[i] / p[i] for i in support)) * p
    return escape / escape.sum()


def _solve_active_set(X, b, s):
    """argmin_simplex Phi for gradients with coordinates X (m, r), s > 0: Wolfe's active-set method, exact like the
    enumeration of all 2^m - 1 faces but only visiting the faces on a path of decrease.

    Start at the best vertex. At the minimiser of Phi over the current face, Phi's gradient
    grad = b + s H p / ||G_p|| is constant on the support (= grad^T p = Phi(p), Phi being 1-homogeneous); if no
    vertex has a smaller gradient, the Frank-Wolfe gap Phi(p) - min_i grad_i, an upper bound on Phi(p) - Phi*, is
    zero and p is optimal. Otherwise add the vertex with the smallest gradient (it lies outside the face's affine
    hull, so the face stays non-degenerate) and descend on the larger face. Phi falls strictly at every step and
    each step ends at the face minimiser of its support, so no support comes back and the method stops, in
    practice after about one step per vertex of the final support. The kink G_p = 0 is handled by _leave_kink.
    """
    norms = np.linalg.norm(X, axis=1)
    start = int(np.argmin(b + s * norms))
    p, support, value = np.eye(len(X))[start], [start], float(b[start] + s * norms[start])
    seen = {(start,)}
    while True:
        x = p @ X
        length = np.linalg.norm(x)
        if length <= _TOLERANCE * (norms @ p):  # G_p = 0 up to rounding
            escape = _leave_kink(X, b, s, p, support)
            if escape is None:
                return p
            candidate, candidate_support = escape, [int(i) for i in np.flatnonzero(escape)]
        else:
            grad = b + s * (X @ x) / length
            j = int(np.argmin(grad))
            if grad[j] >= value - _TOLERANCE * _terms_size(X, b, s, p) or j in support:  # j in it: noise
                return p
            candidate, candidate_support = p, sorted(support + [j])
        candidate, candidate_support = _descend(X, b, s, candidate, candidate_support)
        # In exact arithmetic Phi falls at every step, if only by a hair (a huge gradient enters with a tiny weight),
        # so no support comes back; in floating point, a rise or a support seen before is rounding noise: stop.
        candidate_value = _value(X, b, s, candidate)
        if candidate_value > value or tuple(candidate_support) in seen:
            return p
        seen.add(tuple(candidate_support))
        p, support, value = candidate, candidate_support, candidate_value


def solve_dual(H, b, s):
    """argmin_{p in simplex} b^T p + s sqrt(p^T H p) for any m, with b = H w for some w (so that Phi = 0 wherever
    G_p = 0). m = 2: closed form. s = 0: Phi is linear, a vertex. Else the exact active-set method, on coordinates."""
    m = len(H)
    if m == 1:
        return np.ones(1)
    if m == 2:
        return solve_dual_two(H, b, s)
    if s == 0.0:
        return np.eye(m)[np.argmin(b)]
    return _solve_active_set(_coordinates(H), b, s)


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
    Returns (a, info): a is an (m,) float64 tensor with d = sum_i a[i] g_i; info holds "p" (dual / min-norm
    weights) for cagrad, raco and mgda, "p_clipped" for raco, and the diagnostics "cosines" (m, m), "grad_norms",
    "g0_norm", "direction_norm", "rho" = cos(g0, G_p) and "rho_clipped" = cos(g0, G~) where they apply; for cagrad
    and raco "interior" (1 if the dual is not a vertex), for raco "clip_changed" (1 if the clip turns the
    direction: p~ is not proportional to p) and "cos_cagrad" (the cosine between RACO's and CAGrad's directions).
    Degenerate input (all-zero H, zero or colinear gradients, zero weights) gives finite a; where ||g0|| = 0 or
    ||G~|| = 0 the step falls back to d = g0 (a = w), as Algorithm 1 prescribes.
    """
    H = torch.as_tensor(H).detach().to("cpu", torch.float64).numpy()
    w = torch.as_tensor(w, dtype=torch.float64).detach().cpu().numpy().reshape(-1)
    m = len(w)
    if H.shape != (m, m):
        raise ValueError(f"H must be ({m}, {m}) for {m} weights, got {tuple(H.shape)}")
    if not np.isfinite(H).all():
        raise ValueError("H has non-finite entries (a gradient overflowed or is NaN)")
    if (w < 0).any() or abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must be >= 0 and sum to 1, got {w.tolist()}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0.0 <= c < 1.0:
        raise ValueError(f"c must be in [0, 1), got {c}")

    H = (H + H.T) / 2.0
    info = {"cosines": _cosines(H), "grad_norms": np.sqrt(np.clip(np.diag(H), 0.0, None)),
            "g0_norm": math.sqrt(max(w @ H @ w, 0.0))}
    trace = float(np.trace(H))
    Hn = H / trace if trace > 0 else H  # scale invariance: the answer depends on H only up to a positive factor

    a = w.copy()
    if method == "pcgrad":
        a = _pcgrad(Hn, w)
    elif method == "mgda":
        info["p"] = solve_dual(Hn, np.zeros(m), 1.0) if trace > 0 else np.full(m, 1.0 / m)
        a = info["p"].copy()
    elif method in ("cagrad", "raco"):
        a, info["p"], p_tilde = raco_direction(Hn, w, c, clip=method == "raco")
        info["rho"] = _cos(H, w, info["p"])
        info["interior"] = float((info["p"] > 1e-9).sum() > 1)  # the dual is not a vertex
        if method == "raco":  # when the clip matters: does it turn the direction, and how far from CAGrad's?
            info["p_clipped"] = p_tilde
            info["rho_clipped"] = _cos(H, w, p_tilde)
            total = p_tilde.sum()
            info["clip_changed"] = float(total <= 0 or np.abs(p_tilde / max(total, 1e-300) - info["p"]).max() > 1e-9)
            s, norm_p = c * _length(Hn, w), _length(Hn, info["p"])  # CAGrad's line 7 on the same dual, unclipped
            info["cos_cagrad"] = _cos(H, a, w + s * info["p"] / norm_p if s and norm_p else w)
    info["direction_norm"] = math.sqrt(max(a @ H @ a, 0.0))
    info = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in info.items()}
    return torch.from_numpy(a), info
