"""Independent computations the solvers are checked against: random and degenerate gradient families, and the exact
minimum of the CAGrad dual by enumerating every face of the simplex in 40-digit decimal arithmetic."""

import math
from decimal import Decimal, localcontext
from itertools import combinations

import numpy as np
import pytest

RNG = np.random.default_rng(0)


def random_problem(m, dim, c=0.4, rng=RNG):
    G = rng.normal(size=(m, dim))
    H = G @ G.T
    H /= np.trace(H)
    w = rng.dirichlet(np.ones(m))
    return G, H, H @ w, c * math.sqrt(w @ H @ w), w


def frank_wolfe_gap(H, b, s, p):
    """grad^T p - min_i grad_i >= Phi(p) - Phi*, by convexity: a certificate of optimality that needs no solver."""
    grad = b + s * (H @ p) / math.sqrt(p @ H @ p)
    return float(grad @ p - grad.min())


def _face_stationary_point(H, b, s, face):
    """The stationary point of Phi on the relative interior of a face, or None (the closed form of docs/method.md):
    p = e_f + sum_j y_j (e_j - e_f), M the Gram matrix of the g_j - g_f,
    q_min = min ||G_p||^2 on the face's affine hull, y = y_q - (r / s) M^-1 v, r^2 (1 - v^T M^-1 v / s^2) = q_min.
    A singular M means Phi is constant along a line of the face: a smaller face holds the minimum."""
    f, rest = face[0], face[1:]
    n = len(rest)
    rows = [[H[j][l] - H[j][f] - H[f][l] + H[f][f] for l in rest] + [H[j][f] - H[f][f], b[j] - b[f]] for j in rest]
    for col in range(n):  # Gauss-Jordan elimination on [M | k | v]
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        if rows[pivot][col] == 0:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(n):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
    if any(rows[r][r] == 0 for r in range(n)):  # a pivot cancelled to zero later on: singular after all
        return None
    M_inv_k = [rows[r][n] / rows[r][r] for r in range(n)]
    M_inv_v = [rows[r][n + 1] / rows[r][r] for r in range(n)]
    q_min = max(H[f][f] - sum((H[j][f] - H[f][f]) * x for j, x in zip(rest, M_inv_k)), Decimal(0))
    alpha = sum((b[j] - b[f]) * x for j, x in zip(rest, M_inv_v))
    if s == 0 or alpha >= s * s:
        return None
    r = (q_min / (1 - alpha / (s * s))).sqrt()
    y = [-k - r / s * v for k, v in zip(M_inv_k, M_inv_v)]
    p = [Decimal(0)] * len(H)
    p[f] = 1 - sum(y)
    for j, y_j in zip(rest, y):
        p[j] = y_j
    return p


def exact_minimum(H, b, s):
    """(Phi*, p*) by enumerating every face of the simplex (vertices, edges, ..., the interior: Phi is convex, so
    the face holding the minimiser yields it as a stationary point), in 40-digit decimal arithmetic on the exact
    values of the float64 H, b, s. Independent of the solvers under test, and exact where float64 is not: with
    gradient norms 1e12 apart the entries of H span 1e24. 2^m faces: 0.3 s at m = 11."""
    with localcontext() as context:
        context.prec = 40
        m = len(H)
        H, b, s = [[_exact(x) for x in row] for row in H], [_exact(x) for x in b], _exact(s)
        candidates = [[Decimal(int(i == j)) for j in range(m)] for i in range(m)]
        for face in (f for size in range(2, m + 1) for f in combinations(range(m), size)):
            p = _face_stationary_point(H, b, s, face)
            if p is not None and min(p) >= 0:
                candidates.append(p)
        best = min(candidates, key=lambda p: exact_phi(H, b, s, p))
        return float(exact_phi(H, b, s, best)), np.array([float(x) for x in best])


def exact_phi(H, b, s, p):
    """Phi(p) in 40-digit decimal arithmetic (floats are converted exactly): no rounding noise under the root."""
    with localcontext() as context:
        context.prec = 40
        H, b, s, p = [[_exact(x) for x in row] for row in H], [_exact(x) for x in b], _exact(s), [_exact(x) for x in p]
        square = sum(p[i] * H[i][j] * p[j] for i in range(len(p)) for j in range(len(p)))
        return sum(x * y for x, y in zip(b, p)) + s * max(square, Decimal(0)).sqrt()


def _exact(x):
    return x if isinstance(x, Decimal) else Decimal(float(x))


def assert_minimal(H, b, s, p, best):
    """Phi(p), evaluated exactly, is Phi* to 1e-9 relative, or to 1e-13 of the size of Phi's terms where Phi* is 0
    (a kink: G_p = 0 up to the rounding of p's float coordinates)."""
    terms = np.abs(b) @ p + s * np.sqrt(np.diag(H)) @ p
    assert p.min() >= 0.0 and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(exact_phi(H, b, s, p)) == pytest.approx(best, rel=1e-9, abs=1e-13 * terms)


def integer_gradients(m, kind, rng):
    """Small-integer gradients: H = G G^T is exact, and so are its degeneracies (G_p = 0 exactly at the kinks)."""
    G = rng.integers(-3, 4, size=(m, {"rank 2": 2, "rank 3": 3}.get(kind, m + 2))).astype(float)
    if kind == "duplicated":
        G[1] = G[0]
    if kind == "antiparallel":
        G[1] = -2.0 * G[0]
    if kind == "zero":
        G[0] = 0.0
    if kind == "antiparallel, others 1e-6 as long":
        G[1] = -2.0 * G[0]
        G[2:] *= 2.0**-20  # exact: H stays exact
    return G


FAMILIES = ["full rank", "rank 2", "rank 3", "duplicated", "antiparallel", "zero", "antiparallel, others 1e-6 as long"]


def spread_gradients(m, rng):
    """Gradients in m + 3 dimensions whose norms span 1e-6 .. 1e6, as objectives' gradients do in LLM training."""
    G = rng.normal(size=(m, m + 3))
    norms = 10.0 ** np.linspace(-6.0, 6.0, m)
    return G * (rng.permutation(norms) / np.linalg.norm(G, axis=1))[:, None]

