"""The solvers of cagrad.py against independent computations: brute force, KKT certificates, hand-worked values."""

import math
from decimal import Decimal, localcontext
from itertools import combinations

import numpy as np
import pytest
import torch

import cagrad
from cagrad import coefficients, phi, solve_dual, solve_dual_two

RNG = np.random.default_rng(0)


def random_problem(m, dim, c=0.4, rng=RNG):
    G = rng.normal(size=(m, dim))
    H = G @ G.T
    H /= np.trace(H)
    w = rng.dirichlet(np.ones(m))
    return G, H, H @ w, c * math.sqrt(w @ H @ w), w


def brute_force_two(H, b, s):
    """Dense grid then golden-section refinement of the convex h(lam) = Phi((lam, 1 - lam))."""
    h = lambda lam: phi(H, b, s, np.array([lam, 1 - lam]))
    grid = np.linspace(0, 1, 2001)
    best = grid[np.argmin([h(x) for x in grid])]
    lo, hi = max(best - 1e-3, 0.0), min(best + 1e-3, 1.0)
    for _ in range(200):
        x1, x2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        lo, hi = (lo, x2) if h(x1) <= h(x2) else (x1, hi)
    return min(h(lo), h(best), h(0.0), h(1.0))


def frank_wolfe_gap(H, b, s, p):
    """grad^T p - min_i grad_i >= Phi(p) - Phi*, by convexity: a certificate of optimality that needs no solver."""
    grad = b + s * (H @ p) / math.sqrt(p @ H @ p)
    return float(grad @ p - grad.min())


def _face_stationary_point(H, b, s, face):
    """The stationary point of Phi on the relative interior of a face, or None (SPEC's closed form, as
    cagrad.py's enumeration had it up to m = 10): p = e_f + sum_j y_j (e_j - e_f), M the Gram matrix of the g_j - g_f,
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
    values of the float64 H, b, s. Independent of cagrad's solver, and exact where float64 is not: with gradient norms
    1e12 apart the entries of H span 1e24. 2^m faces: 0.3 s at m = 11."""
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


def test_direction_is_algorithm_1_by_hand():
    """SPEC's worked example (its numbers are checked once, in test_toy.py): the direction from the vectors."""
    G = torch.tensor([[1.0, -4.0], [-1.0, 1.0]], dtype=torch.float64)
    a, info = coefficients(G @ G.T, [0.2, 0.8], "raco", c=0.5)
    lam = info["p"][0].item()
    assert 0.2 < lam < 0.8  # interior, and above w_1 = 0.2, so the clip binds on p_1
    g0 = 0.2 * G[0] + 0.8 * G[1]
    G_tilde = 0.2 * G[0] + (1 - lam) * G[1]  # p~ = min(p, w) = (0.2, 1 - lam)
    d = g0 + 0.5 * g0.norm() * G_tilde / G_tilde.norm()
    assert torch.allclose(a @ G, d, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3, 50])
def test_closed_form_matches_brute_force(dim):
    for _ in range(40):
        _, H, b, s, _ = random_problem(2, dim)
        found = phi(H, b, s, solve_dual_two(H, b, s))
        assert found <= brute_force_two(H, b, s) + 1e-12


def test_closed_form_matches_general_solver():
    # the active-set method is an independent derivation (affine coordinates on faces, not the squared quadratic)
    for _ in range(100):
        _, H, b, s, _ = random_problem(2, 4)
        general = phi(H, b, s, cagrad._solve_active_set(cagrad._coordinates(H), b, s))
        assert phi(H, b, s, solve_dual_two(H, b, s)) == pytest.approx(general, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("m", [3, 4, 6, 12])
def test_general_solver_reaches_the_minimum(m):
    for trial in range(20):
        dim = [2, m - 1, m + 3][trial % 3]  # rank-deficient Gram matrices included
        _, H, b, s, _ = random_problem(m, dim)
        p = solve_dual(H, b, s)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0, abs=1e-12)
        value = phi(H, b, s, p)
        assert frank_wolfe_gap(H, b, s, p) <= 1e-9 * max(abs(value), 1e-12)
        # and no point of a random cloud on the simplex does better
        cloud = RNG.dirichlet(np.ones(m) * 0.3, size=2000)
        assert value <= min(phi(H, b, s, q) for q in cloud) + 1e-12


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


@pytest.mark.parametrize("kind", FAMILIES)
def test_general_solver_matches_exact_enumeration(kind):
    rng = np.random.default_rng(FAMILIES.index(kind))
    for trial in range(10):
        m = 3 + trial % 4
        G = integer_gradients(m, kind, rng)
        H, w, c = G @ G.T, rng.dirichlet(np.ones(m)), [0.4, 0.9, 0.999][trial % 3]
        for b, s in [(H @ w, c * math.sqrt(w @ H @ w)), (np.zeros(m), 1.0)]:  # RACO's / CAGrad's dual, MGDA's
            assert_minimal(H, b, s, solve_dual(H, b, s), exact_minimum(H, b, s)[0])


def test_a_kink_can_be_the_optimum():
    # g_1 = -g_2 cancel and g_3 agrees with g0: d = g0 already has <g_i, d> >= 0 for every i, so Phi* = 0, attained
    # only at p = (1/2, 1/2, 0), where G_p = 0 and Phi has no gradient. RACO's clipped mixture cancels too: d = g0.
    G = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    w = np.array([0.1, 0.1, 0.8])
    a, info = coefficients(G @ G.T, w, "raco", c=0.4)
    assert np.allclose(info["p"].numpy(), [0.5, 0.5, 0.0], atol=1e-12)
    assert np.allclose(a.numpy(), w)


def test_solver_leaves_a_kink_that_is_not_optimal(monkeypatch):
    # g_2 = (2, -2) and g_3 = (-1, 1) cancel at p = (0, 1/3, 2/3, 0), where the descent stops first with Phi = 0;
    # the projected problem on the other objectives shows Phi* < 0 elsewhere (the dual of _leave_kink)
    G = np.array([[-1.0, -3.0], [2.0, -2.0], [-1.0, 1.0], [-1.0, 2.0]])
    w = np.array([0.54, 0.01, 0.32, 0.13])
    H = G @ G.T
    b, s = H @ w, 0.9 * math.sqrt(w @ H @ w)
    kinks = []
    leave_kink = cagrad._leave_kink
    monkeypatch.setattr(cagrad, "_leave_kink", lambda *args: kinks.append((args[4], leave_kink(*args))) or kinks[-1][1])
    p = solve_dual(H, b, s)
    assert len(kinks) == 1 and kinks[0][0] == [1, 2]
    assert phi(H, b, s, kinks[0][1]) < 0.0  # the escape
    assert_minimal(H, b, s, p, exact_minimum(H, b, s)[0])
    assert phi(H, b, s, p) < -0.01


def test_beyond_ten_objectives_the_issue_examples():
    # 11 gradients of rank 3 (0 lies in their hull, so the dual has kinks), c = 0.999, uniform weights: the
    # projected-gradient path divided by zero here when its backtracking step underflowed
    rng = np.random.default_rng
    w = np.full(11, 1 / 11)
    for seed in (6, 7):
        G = rng(6).standard_normal((11, 3)) @ rng(seed).standard_normal((3, 40))
        H = G @ G.T
        for method in ("cagrad", "raco"):
            a, info = coefficients(H, w, method, c=0.999)
            assert torch.isfinite(a).all()
            b, s = H @ w, 0.999 * math.sqrt(w @ H @ w)
            assert_minimal(H, b, s, info["p"].numpy(), exact_minimum(H, b, s)[0])
    # MGDA crashed for rank-deficient Gram matrices, m = 11 - 13; 0 is in the hull, so the min-norm point is 0
    for m in (11, 12, 13):
        G = rng(m).standard_normal((m, 3)) @ rng(0).standard_normal((3, 40))
        a, _ = coefficients(G @ G.T, np.full(m, 1 / m), "mgda")
        assert np.linalg.norm(a.numpy() @ G) <= 1e-12 * (a.numpy() @ np.linalg.norm(G, axis=1))


@pytest.mark.parametrize("m", [12, 16, 30])
def test_many_objectives_are_certified_optimal(m):
    # no enumeration at this size (2^m faces): the Frank-Wolfe gap, from the vectors, proves Phi(p) - Phi* <= gap
    rng = np.random.default_rng(m)
    for trial in range(4):
        G = rng.normal(size=(m, [m + 5, 1000][trial % 2]))
        w = rng.dirichlet(np.ones(m)) if trial < 2 else np.full(m, 1 / m)
        for method, c in [("cagrad", 0.4), ("raco", 0.999), ("mgda", 0.4)]:
            _, info = coefficients(G @ G.T, w, method, c=c)
            x = info["p"].numpy() @ G
            g0 = w @ G if method != "mgda" else np.zeros(G.shape[1])
            s = c * np.linalg.norm(g0) if method != "mgda" else 1.0
            grad = G @ g0 + s * G @ x / np.linalg.norm(x)
            value = x @ g0 + s * np.linalg.norm(x)
            assert value - grad.min() <= 1e-9 * abs(value)


def spread_gradients(m, rng):
    """Gradients in m + 3 dimensions whose norms span 1e-6 .. 1e6, as objectives' gradients do in LLM training."""
    G = rng.normal(size=(m, m + 3))
    norms = 10.0 ** np.linspace(-6.0, 6.0, m)
    return G * (rng.permutation(norms) / np.linalg.norm(G, axis=1))[:, None]


@pytest.mark.parametrize("m", [2, 3, 5, 11])
def test_tiny_gradients_are_not_zero(m):
    # an absolute 1e-12 on the trace-normalised H treated the gradients below ~1e-6 of the largest as zero: the dual
    # skipped the face holding its minimum and fell back to a vertex. Against the exact enumeration, dual and direction.
    rng = np.random.default_rng(m)
    for _ in range(4 if m < 11 else 1):
        G = spread_gradients(m, rng)
        H, w = G @ G.T, rng.dirichlet(np.ones(m))
        g0 = w @ G
        for method in ("cagrad", "raco", "mgda"):
            a, info = coefficients(H, w, method, c=0.4)
            b, s = (H @ w, 0.4 * np.linalg.norm(g0)) if method != "mgda" else (np.zeros(m), 1.0)
            best, p = exact_minimum(H, b, s)
            assert_minimal(H, b, s, info["p"].numpy(), best)
            if method == "mgda":
                d = p @ G
            else:
                mixture = (np.minimum(p, w) if method == "raco" else p) @ G
                d = g0 + s * mixture / np.linalg.norm(mixture)
            assert np.linalg.norm(a.numpy() @ G - d) <= 1e-7 * np.linalg.norm(d)


@pytest.mark.parametrize("method", ["cagrad", "raco", "mgda", "pcgrad"])  # lw returns w whatever H is
@pytest.mark.parametrize("m", [2, 3])
def test_scale_invariance(method, m):
    G, _, _, _, w = random_problem(m, 7)
    H = torch.from_numpy(G @ G.T)
    a, _ = coefficients(H, w, method)
    for k in [1e-30, 1e-15, 1e-3, 1e3, 1e15, 1e30]:
        a_k, _ = coefficients(k * H, w, method)
        assert torch.allclose(a_k, a, rtol=1e-9, atol=1e-12), (k, a_k, a)


def test_clip_is_elementwise_min_without_renormalisation():
    for _ in range(50):
        G, H, _, _, w = random_problem(3, 10)
        a, info = coefficients(H, w, "raco", c=0.6)
        p, p_tilde = info["p"].numpy(), info["p_clipped"].numpy()
        assert np.array_equal(p_tilde, np.minimum(p, w))
        # a = w + s p~ / ||G~||: the clipped mixture enters unnormalised (||G~|| uses the unnormalised p~)
        s = 0.6 * math.sqrt(w @ H @ w)
        assert np.allclose(a.numpy(), w + s * p_tilde / math.sqrt(p_tilde @ H @ p_tilde), atol=1e-12)


def test_cagrad_skips_the_clip():
    G, H, _, _, w = random_problem(2, 10)
    a, info = coefficients(H, w, "cagrad", c=0.4)
    p = info["p"].numpy()
    s = 0.4 * math.sqrt(w @ H @ w)
    assert np.allclose(a.numpy(), w + s * p / math.sqrt(p @ H @ p), atol=1e-12)
    assert "p_clipped" not in info


@pytest.mark.parametrize("method", ["cagrad", "raco"])
def test_c_zero_reduces_to_loss_weighting(method):
    _, H, _, _, w = random_problem(3, 5)
    a, _ = coefficients(H, w, method, c=0.0)
    assert np.allclose(a.numpy(), w)
    assert not np.allclose(coefficients(H, w, method, c=0.4)[0].numpy(), w)  # c > 0 on the same H does move it


def test_clip_never_lowers_cosine_for_two_objectives():
    strictly_better = 0
    for _ in range(300):
        _, H, _, _, w = random_problem(2, 20)
        _, info = coefficients(H, w, "raco", c=0.4)
        assert info["rho_clipped"] >= info["rho"] - 1e-12
        lam = info["p"][0].item()
        strictly_better += 1e-9 < lam < 1 - 1e-9 and abs(lam - w[0]) > 1e-6 and info["rho_clipped"] > info["rho"] + 1e-9
    assert strictly_better > 0  # interior duals exist in 20 dimensions, and there the clip helps


def test_cagrad_direction_solves_the_primal():
    # CAGrad's dual solution gives the direction maximising min_i <g_i, d> over the ball ||d - g0|| <= c ||g0||;
    # check that no sampled direction in that ball has a larger worst-case improvement.
    G, H, _, _, w = random_problem(2, 3, rng=np.random.default_rng(3))
    a, _ = coefficients(H, w, "cagrad", c=0.5)
    d = a.numpy() @ G
    g0 = w @ G
    worst = lambda x: (G @ x).min()
    directions = RNG.normal(size=(20000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ball = g0 + 0.5 * np.linalg.norm(g0) * directions * RNG.uniform(0, 1, size=(20000, 1)) ** (1 / 3)
    assert worst(d) >= max(worst(x) for x in ball) - 1e-9
    assert np.linalg.norm(d - g0) <= 0.5 * np.linalg.norm(g0) + 1e-9


def test_mgda_is_the_min_norm_point_and_ignores_weights():
    G, H, _, _, _ = random_problem(3, 10)
    a1, info = coefficients(H, [0.2, 0.3, 0.5], "mgda")
    a2, _ = coefficients(H, [0.9, 0.05, 0.05], "mgda")
    assert torch.equal(a1, a2) and torch.equal(a1, info["p"])
    norm = lambda p: p @ H @ p
    cloud = RNG.dirichlet(np.ones(3) * 0.3, size=5000)
    assert norm(a1.numpy()) <= min(norm(q) for q in cloud) + 1e-12


def pcgrad_by_projection(G, w):
    """PCGrad on the vectors themselves: each g_i projected off the g_j it conflicts with, j = i+1, i+2, ..."""
    projected = []
    for i in range(len(G)):
        g = G[i].copy()
        for j in [(i + k) % len(G) for k in range(1, len(G))]:
            if g @ G[j] < 0:
                g -= (g @ G[j]) / (G[j] @ G[j]) * G[j]
        projected.append(g)
    return w @ np.array(projected)


def test_pcgrad_matches_explicit_projection():
    G, H, _, _, w = random_problem(3, 6, rng=np.random.default_rng(7))
    a, _ = coefficients(H, w, "pcgrad")
    assert np.allclose(a.numpy() @ G, pcgrad_by_projection(G, w), atol=1e-10)
    # without conflicts PCGrad is loss weighting
    G_agree = np.abs(G)
    a, _ = coefficients(G_agree @ G_agree.T, w, "pcgrad")
    assert np.allclose(a.numpy(), w)


@pytest.mark.parametrize("m", [2, 3, 5, 12])
def test_pcgrad_projects_onto_tiny_gradients(m):
    # a gradient 1e-6 of the largest still conflicts: skipping the projection onto it moved d by up to 23%
    rng = np.random.default_rng(m)
    for _ in range(10):
        G, w = spread_gradients(m, rng), rng.dirichlet(np.ones(m))
        expected = pcgrad_by_projection(G, w)
        a, _ = coefficients(G @ G.T, w, "pcgrad")
        assert np.linalg.norm(a.numpy() @ G - expected) <= 1e-9 * np.linalg.norm(expected)


@pytest.mark.parametrize("method", ["lw", "cagrad", "raco", "mgda", "pcgrad"])
def test_degenerate_inputs_give_finite_coefficients(method):
    g = np.array([1.0, 2.0, -1.0])
    cases = {
        "all zero": (np.zeros((2, 3)), [0.5, 0.5]),
        "one zero gradient": (np.stack([np.zeros(3), g]), [0.5, 0.5]),
        "antiparallel, g0 = 0": (np.stack([g, -g]), [0.5, 0.5]),
        "antiparallel": (np.stack([g, -g]), [0.7, 0.3]),
        "identical": (np.stack([g, g]), [0.3, 0.7]),
        "colinear": (np.stack([g, 3 * g]), [0.3, 0.7]),
        "zero weight": (np.stack([g, np.array([-1.0, 0.0, 2.0])]), [1.0, 0.0]),
        "three, one zero": (np.stack([g, np.zeros(3), -g]), [0.2, 0.5, 0.3]),
    }
    for name, (G, w) in cases.items():
        a, info = coefficients(G @ G.T, w, method)
        assert torch.isfinite(a).all(), name
        assert all(torch.isfinite(v).all() if torch.is_tensor(v) else math.isfinite(v) for v in info.values()), name
        if name == "antiparallel, g0 = 0" and method in ("lw", "cagrad", "raco"):
            assert np.allclose(a.numpy() @ G, 0.0)  # d = g0 = 0: a Pareto-critical point stays put
        if name == "all zero":
            assert np.allclose(a.numpy() @ G, 0.0)


def test_bad_arguments_raise_clear_errors():
    H = np.eye(2)
    with pytest.raises(ValueError, match="weights"):
        coefficients(H, [0.7, 0.7])
    with pytest.raises(ValueError, match="weights"):
        coefficients(H, [1.5, -0.5])
    with pytest.raises(ValueError, match="unknown method"):
        coefficients(H, [0.5, 0.5], "adam")
    with pytest.raises(ValueError, match="c must be"):
        coefficients(H, [0.5, 0.5], c=1.0)
    with pytest.raises(ValueError, match="H must be"):
        coefficients(np.eye(3), [0.5, 0.5])
    with pytest.raises(ValueError, match="non-finite"):
        coefficients(np.array([[np.nan, 0], [0, 1]]), [0.5, 0.5])


def test_any_float_dtype_is_accepted():
    G, H, _, _, w = random_problem(2, 5)
    a64, _ = coefficients(torch.from_numpy(H), w)
    for dtype in (torch.float32, torch.bfloat16):
        a, _ = coefficients(torch.from_numpy(H).to(dtype), torch.from_numpy(w))
        assert a.dtype == torch.float64
        assert torch.allclose(a, a64, atol=0.05)


def test_when_the_clip_matters_diagnostics_against_the_vectors():
    G = np.array([[1.0, -4.0], [-1.0, 1.0]])  # SPEC's worked example: interior dual (0.356, 0.644), w = (0.2, 0.8)
    a, info = coefficients(G @ G.T, [0.2, 0.8], "raco", c=0.5)
    a_cagrad, cagrad_info = coefficients(G @ G.T, [0.2, 0.8], "cagrad", c=0.5)
    d, d_cagrad = a.numpy() @ G, a_cagrad.numpy() @ G
    assert info["interior"] == 1.0 and cagrad_info["interior"] == 1.0
    assert info["clip_changed"] == 1.0  # p~ = (0.2, 0.644) is not proportional to p = (0.356, 0.644)
    assert info["cos_cagrad"] == pytest.approx(d @ d_cagrad / np.linalg.norm(d) / np.linalg.norm(d_cagrad))
    assert info["cos_cagrad"] < 0.999
    # a vertex dual: g2 much longer and opposed, so p = (1, 0); the clip scales p, it cannot turn it
    G = np.array([[1.0, 0.2], [-6.0, 0.5]])
    a, info = coefficients(G @ G.T, [0.5, 0.5], "raco", c=0.4)
    assert info["p"].tolist() == [1.0, 0.0] and info["interior"] == 0.0 and info["clip_changed"] == 0.0
    assert info["cos_cagrad"] == pytest.approx(1.0)
