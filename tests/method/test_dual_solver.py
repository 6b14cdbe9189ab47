"""dual_solver.py, the CAGrad dual for any m, against independent computations: the exact minimum over every face of
the simplex in 40-digit arithmetic (oracles.exact_minimum), the Frank-Wolfe certificate, and the closed form for
m = 2. Degenerate families (rank-deficient, duplicated, antiparallel and zero gradients; norms 1e6 apart) included."""

import math

import numpy as np
import pytest
import torch

import dual_solver
from cagrad import coefficients, phi, solve_dual, solve_dual_two
from oracles import (FAMILIES, RNG, assert_minimal, exact_minimum, frank_wolfe_gap, integer_gradients, random_problem,
                     spread_gradients)


def test_closed_form_matches_general_solver():
    # the active-set method is an independent derivation (affine coordinates on faces, not the squared quadratic)
    for _ in range(100):
        _, H, b, s, _ = random_problem(2, 4)
        general = phi(H, b, s, dual_solver.wolfe_active_set(H, b, s))
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
    leave_kink = dual_solver._leave_kink
    monkeypatch.setattr(dual_solver, "_leave_kink",
                        lambda *args: kinks.append((args[4], leave_kink(*args))) or kinks[-1][1])
    p = solve_dual(H, b, s)
    assert len(kinks) == 1 and kinks[0][0] == [1, 2]
    assert phi(H, b, s, kinks[0][1]) < 0.0  # the escape
    assert_minimal(H, b, s, p, exact_minimum(H, b, s)[0])
    assert phi(H, b, s, p) < -0.01


def test_eleven_to_thirteen_objectives_of_rank_three_are_solved_exactly():
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
