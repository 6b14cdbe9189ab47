"""cagrad.py, every method as a map (H, w) -> a, against independent computations: Algorithm 1 carried out on the
vectors by hand, a brute-force search of the dual, the exact dual by enumeration (oracles.py), the CAGrad primal
sampled, PCGrad's projections done on the vectors. The general-m solver has its own tests (test_dual_solver.py)."""

import math

import numpy as np
import pytest
import torch

from cagrad import METHODS, coefficients, phi, solve_dual_two
from oracles import RNG, exact_minimum, random_problem, spread_gradients


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



def test_direction_is_algorithm_1_by_hand():
    """The paper's worked example (its numbers are checked once, in test_toy.py), Algorithm 1 on the vectors: lam* by
    bisection on the sign of dPhi/dlam, computed from the vectors, independently of the closed form under test."""
    G = torch.tensor([[1.0, -4.0], [-1.0, 1.0]], dtype=torch.float64)
    w, c = torch.tensor([0.2, 0.8], dtype=torch.float64), 0.5
    g0 = w @ G
    slope = lambda lam: ((G[0] - G[1]) @ g0 + c * g0.norm() * (lam * G[0] + (1 - lam) * G[1]) @ (G[0] - G[1])  # noqa: E731
                         / (lam * G[0] + (1 - lam) * G[1]).norm())
    low, high = 0.0, 1.0
    assert slope(low) < 0 < slope(high)  # the minimum is inside (0, 1)
    for _ in range(100):
        low, high = (low, (low + high) / 2) if slope((low + high) / 2) > 0 else ((low + high) / 2, high)
    lam = (low + high) / 2
    assert 0.2 < lam < 0.8  # interior, and above w_1 = 0.2, so the clip binds on p_1
    G_tilde = min(lam, 0.2) * G[0] + min(1 - lam, 0.8) * G[1]  # line 5, p~ = min(p, w), then line 6
    d = g0 + c * g0.norm() * G_tilde / G_tilde.norm()  # line 7
    a, _ = coefficients(G @ G.T, w, "raco", c=c)
    assert torch.allclose(a @ G, d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3, 50])
def test_closed_form_matches_brute_force(dim):
    for _ in range(40):
        _, H, b, s, _ = random_problem(2, dim)
        found = phi(H, b, s, solve_dual_two(H, b, s))
        assert found <= brute_force_two(H, b, s) + 1e-12


@pytest.mark.parametrize("method", ["cagrad", "raco"])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_direction_from_an_exact_dual_on_the_vectors(method, m):
    """Lines 3-7 done on the vectors with the dual from the 40-digit enumeration: d = g0 + c ||g0|| G~ / ||G~||,
    G~ = sum_i p~_i g_i with p~ = min(p, w) for RACO (not renormalised: sum p~ < 1 where the clip binds) and p~ = p
    for CAGrad, which has no clip (and no rescaling of d)."""
    rng, clipped = np.random.default_rng(m), 0
    for _ in range(10):
        G, H, b, s, w = random_problem(m, m + 3, c=0.6, rng=rng)
        a, info = coefficients(H, w, method, c=0.6)
        _, p = exact_minimum(H, b, s)
        p_tilde = np.minimum(p, w) if method == "raco" else p
        mixture, g0 = p_tilde @ G, w @ G
        d = g0 + 0.6 * np.linalg.norm(g0) * mixture / np.linalg.norm(mixture)
        assert np.linalg.norm(a.numpy() @ G - d) <= 1e-9 * np.linalg.norm(d)
        if method == "raco":
            assert np.allclose(info["p_clipped"].numpy(), p_tilde, atol=1e-9)
            clipped += p_tilde.sum() < 1 - 1e-6
        else:
            assert "p_clipped" not in info
    assert method == "cagrad" or clipped > 0  # the clip bound on some of these problems


@pytest.mark.parametrize("method", ["lw", "cagrad", "raco", "mgda"])
@pytest.mark.parametrize("m", [2, 3, 5])
def test_permuting_the_objectives_permutes_the_coefficients(method, m):
    """Every method whose definition does not depend on the objectives' order (PCGrad's cyclic order does for m > 2)."""
    rng = np.random.default_rng(10 + m)
    for _ in range(10):
        G, H, _, _, w = random_problem(m, m + 3, rng=rng)
        order = rng.permutation(m)
        a, _ = coefficients(H, w, method, c=0.5)
        a_permuted, _ = coefficients(H[np.ix_(order, order)], w[order], method, c=0.5)
        assert np.allclose(a_permuted.numpy(), a.numpy()[order], rtol=1e-9, atol=1e-12)
        assert np.allclose(a_permuted.numpy() @ G[order], a.numpy() @ G, rtol=1e-9, atol=1e-12)  # the same d


def test_pcgrad_is_order_free_for_two_objectives():
    G, H, _, _, w = random_problem(2, 5, rng=np.random.default_rng(4))
    a, _ = coefficients(H, w, "pcgrad")
    a_swapped, _ = coefficients(H[::-1, ::-1].copy(), w[::-1].copy(), "pcgrad")
    assert np.allclose(a_swapped.numpy(), a.numpy()[::-1], rtol=1e-12)


@pytest.mark.parametrize("method", ["cagrad", "raco", "mgda", "pcgrad"])  # lw returns w whatever H is
@pytest.mark.parametrize("m", [2, 3])
def test_scale_invariance(method, m):
    G, _, _, _, w = random_problem(m, 7)
    H = torch.from_numpy(G @ G.T)
    a, _ = coefficients(H, w, method)
    for k in [1e-30, 1e-15, 1e-3, 1e3, 1e15, 1e30]:
        a_k, _ = coefficients(k * H, w, method)
        assert torch.allclose(a_k, a, rtol=1e-9, atol=1e-12), (k, a_k, a)


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
    a1, _ = coefficients(H, [0.2, 0.3, 0.5], "mgda")
    a2, _ = coefficients(H, [0.9, 0.05, 0.05], "mgda")
    assert torch.equal(a1, a2)
    smallest, _ = exact_minimum(H, np.zeros(3), 1.0)  # min over the simplex of ||sum_i p_i g_i||, enumerated
    assert a1.min() >= 0 and a1.sum().item() == pytest.approx(1.0)
    assert math.sqrt(a1.numpy() @ H @ a1.numpy()) == pytest.approx(smallest, rel=1e-9)


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



# Where Algorithm 1 prescribes d = g0 (||g0|| = 0, or G~ = 0), a = w; MGDA with every gradient zero is uniform.
FALLBACK = {"lw": "w", "cagrad": "w", "raco": "w", "mgda": "uniform", "pcgrad": "w"}


@pytest.mark.parametrize("method", METHODS)
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
        if name == "all zero":  # any a gives d = 0 here, so the coefficients themselves are checked
            expected = np.asarray(w) if FALLBACK[method] == "w" else np.full(len(w), 1.0 / len(w))
            assert np.array_equal(a.numpy(), expected), (name, a)


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
    G = np.array([[1.0, -4.0], [-1.0, 1.0]])  # the worked example: interior dual (0.356, 0.644), w = (0.2, 0.8)
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


def test_diagnostics_count_a_tiny_dual_weight_on_a_long_gradient():
    """Gradient norms 1e10 apart: the dual puts p_2 ~ 2e-11 on the long gradient, and that carries a sixth of G_p.
    Seen on the vectors, G_p is not along g_1 (the dual is interior) and the clip p~ = min(p, w), which halves p_2,
    turns it: thresholds on p itself (p_2 > 1e-9) would call this a vertex that no clip can turn."""
    G = np.array([[1.0, 0.0], [1e10 * math.cos(1.7), 1e10 * math.sin(1.7)]])
    w = np.array([1 - 1e-11, 1e-11])
    _, info = coefficients(G @ G.T, w, "raco", c=0.4)
    p, p_tilde = info["p"].numpy(), info["p_clipped"].numpy()
    assert 0 < p[1] < 1e-9 and p_tilde[1] < p[1]
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    G_p, G_tilde = p @ G, p_tilde @ G
    assert unit(G_p) @ unit(G[0]) < 0.99  # not a vertex: G_p leaves g_1's direction
    assert unit(G_tilde) @ unit(G_p) < 0.999  # the clip turns it
    assert info["interior"] == 1.0 and info["clip_changed"] == 1.0
    for k in (1e-30, 1e30):  # and the same answer at any scale of H
        _, scaled = coefficients(k * (G @ G.T), w, "raco", c=0.4)
        assert scaled["interior"] == 1.0 and scaled["clip_changed"] == 1.0
