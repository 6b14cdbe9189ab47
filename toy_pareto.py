"""The theory of RACO made visible and checked, on problems small enough to know the answer exactly.

Three parts (SPEC sections 2, 3 and 6), each a function the tests call with smaller sizes:
1. check_quadratics: two convex quadratic objectives, plain gradient steps theta <- theta - eta d with eta < 1/L.
   Step by step it checks Thm 3.1's descent certificate, Gamma >= (1 - c^2)/2 and the min-gradient bound, the
   m = 2 facts rho~ >= rho and Thm 3.2's identity, and that DPO-LW, CAGrad and RACO all reach the weighted optimum
   theta_w* (a Pareto-critical point); it counts the iterations each method needs.
2. worked_example: SPEC section 2's numbers recomputed (the dual also by brute force over a grid).
3. run_cagrad_toy: the classic two-objective toy of the CAGrad paper, every method from the three published starts
   and several user weights, with Adam. Figures in parameter and objective space show MGDA and PCGrad landing on
   *some* Pareto point while LW, CAGrad and RACO land on the one the weights ask for.

    python toy_pareto.py [--out out/toy] [--quick]

prints the tables, writes PNGs to --out, and exits 1 with a line naming every claim that failed.
"""

import argparse
import math
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

from cagrad import METHODS, coefficients

Claim = namedtuple("Claim", "name passed detail")
DESCENT_METHODS = ("lw", "cagrad", "raco")  # the three that target theta_w*; MGDA and PCGrad do not


def gamma(rho, c, L_eta):
    """Thm 3.1's per-step decrease factor Gamma(rho) = 1 + c rho - (L eta / 2)(1 + c^2 + 2 c rho).

    From the descent lemma with d = g0 + c ||g0|| u, rho = cos(g0, u): <g0, d> = ||g0||^2 (1 + c rho) and
    ||d||^2 = ||g0||^2 (1 + c^2 + 2 c rho), so L_w(theta - eta d) <= L_w(theta) - eta Gamma ||g0||^2.
    """
    return 1.0 + c * rho - 0.5 * L_eta * (1.0 + c * c + 2.0 * c * rho)


def min_norm_ratio(H):
    """min over the simplex of ||sum_i p_i g_i|| / max_i ||g_i||: zero exactly at Pareto-critical points."""
    _, info = coefficients(H, np.full(len(H), 1.0 / len(H)), "mgda")
    return info["direction_norm"] / max(float(info["grad_norms"].max()), 1e-300)


# ----------------------------------------------------------------------------------------------------------------
# 1. Convex quadratics: every quantity of Section 3 is computable exactly.

def random_quadratics(dim, seed):
    """Two objectives L_i(theta) = 0.5 (theta - t_i)^T A_i (theta - t_i) >= 0 with distant minimisers t_i.

    A_i = Q_i diag(e_i) Q_i^T with independent random rotations (so the objectives disagree in direction, not just in
    target) and eigenvalues log-uniform in [0.05, 1]: L_w's condition number is at most 20, which keeps the runs
    short. User weights w_1 ~ U(0.1, 0.9). Returns A (2, n, n), targets (2, n), w (2,), theta0 (n,), and the exact
    weighted problem: A_w = sum w_i A_i, theta_star solving A_w theta = sum w_i A_i t_i, and L = lambda_max(A_w),
    the smoothness constant of L_w.
    """
    rng = np.random.default_rng(seed)
    rotations = [np.linalg.qr(rng.standard_normal((dim, dim)))[0] for _ in range(2)]
    A = np.stack([Q @ np.diag(np.exp(rng.uniform(math.log(0.05), 0.0, dim))) @ Q.T for Q in rotations])
    targets = 3.0 * rng.standard_normal((2, dim))
    w1 = rng.uniform(0.1, 0.9)
    w = np.array([w1, 1.0 - w1])
    A_w = np.einsum("i,ijk->jk", w, A)
    theta_star = np.linalg.solve(A_w, np.einsum("i,ijk,ik->j", w, A, targets))
    return dict(A=A, targets=targets, w=w, theta0=5.0 * rng.standard_normal(dim), A_w=A_w,
                theta_star=theta_star, L=float(np.linalg.eigvalsh(A_w)[-1]))


def descend(problem, method, c, eta, max_steps, tol):
    """Plain gradient steps theta <- theta - eta d, d = sum_i a_i g_i with a from cagrad.coefficients.

    Stops once L_w - L_w* <= tol (L_w(theta0) - L_w*). Not much further: the solver sees g0 only through the Gram
    matrix, ||g0||^2 = w^T H w, which carries an absolute error ~1e-16 max ||g_i||^2; near theta_w* the g_i nearly
    cancel (w1 g1 = -w2 g2 there), and once ||g0|| / ||g_i|| < ~1e-7 (excess ~1e-14) its rho is rounding noise.
    Per step it logs what Section 3 talks about:
    excess = L_w(theta_t) - L_w* (exact: 0.5 e^T A_w e with e = theta - theta_w*, so no cancellation near the end),
    excess_next, g0_sq = ||grad L_w||^2, the c and rho of d = g0 + c ||g0|| u as the solver reports them and as
    measured from the vectors (c = rho = 0 where d = g0), lam (the dual's p_1), rho_clipped and rho_unclipped
    (RACO's cosines cos(g0, G~) and cos(g0, G_p) as the solver reports them, even where d falls back to g0),
    clip_changed.
    """
    A, targets, w, A_w, theta_star = (problem[k] for k in ("A", "targets", "w", "A_w", "theta_star"))
    theta = problem["theta0"].copy()
    excess0 = 0.5 * (theta - theta_star) @ A_w @ (theta - theta_star)
    log = {k: [] for k in ("excess", "excess_next", "g0_sq", "c", "rho", "c_measured", "rho_measured", "lam",
                           "rho_clipped", "rho_unclipped", "clip_changed")}
    steps_to_tol = None
    for step in range(max_steps + 1):
        e = theta - theta_star
        if 0.5 * e @ A_w @ e <= tol * excess0:
            steps_to_tol = step
            break
        if step == max_steps:
            break
        G = np.einsum("ijk,ik->ij", A, theta - targets)  # g_i = A_i (theta - t_i), (2, n)
        a, info = coefficients(G @ G.T, w, method, c)
        a = a.numpy()
        g0, d = w @ G, a @ G
        fell_back = method == "lw" or np.array_equal(a, w)  # d = g0: the c rho terms vanish from Gamma
        rho_key = "rho_clipped" if method == "raco" else "rho"
        log["c"].append(0.0 if fell_back else c)
        log["rho"].append(0.0 if fell_back else info[rho_key])
        # The same two numbers measured from the vectors themselves, to check the solver's bookkeeping.
        u = d - g0
        log["c_measured"].append(np.linalg.norm(u) / np.linalg.norm(g0))
        log["rho_measured"].append(0.0 if fell_back else g0 @ u / (np.linalg.norm(g0) * np.linalg.norm(u)))
        p = info["p"].numpy() if "p" in info else np.full(2, np.nan)
        log["lam"].append(p[0])
        log["rho_clipped"].append(info.get("rho_clipped", np.nan))  # RACO's cosines after and before the clip
        log["rho_unclipped"].append(info.get("rho", np.nan))
        p_clipped = info["p_clipped"].numpy() if "p_clipped" in info else p
        # The clip always lowers some p_i when p != w, but it changes the *direction* only off the vertices.
        log["clip_changed"].append(bool(np.abs(p_clipped / max(p_clipped.sum(), 1e-300) - p).max() > 1e-9))
        log["excess"].append(0.5 * e @ A_w @ e)
        log["g0_sq"].append(g0 @ g0)
        theta = theta - eta * d
        e = theta - theta_star
        log["excess_next"].append(0.5 * e @ A_w @ e)
    out = {k: np.array(v, dtype=float) for k, v in log.items()}
    out.update(steps_to_tol=steps_to_tol, excess0=excess0)
    return out


def check_quadratics(dims=(2, 50, 100), seeds=range(10), c=0.4, eta_scale=0.5, max_steps=3000, tol=1e-10):
    """Run LW, CAGrad and RACO on random_quadratics(dim, seed) with eta = eta_scale / L; check Section 3.

    Returns {"rows": one summary dict per (dim, method), "claims": [Claim], "traces": {(dim, method): descend output
    for the first seed}} (the traces feed the convergence figure).
    """
    rows, claims, traces = [], [], {}
    for dim in dims:
        runs = {m: [] for m in DESCENT_METHODS}
        pareto_at_star = []
        for seed in seeds:
            problem = random_quadratics(dim, seed)
            eta, L = eta_scale / problem["L"], problem["L"]
            G_star = np.einsum("ijk,ik->ij", problem["A"], problem["theta_star"] - problem["targets"])
            pareto_at_star.append(min_norm_ratio(G_star @ G_star.T))
            for method in DESCENT_METHODS:
                run = descend(problem, method, c, eta, max_steps, tol)
                run.update(eta=eta, L=L, c_run=0.0 if method == "lw" else c)
                runs[method].append(run)
                if seed == seeds[0]:
                    traces[(dim, method)] = run
        worst = dict(cert=-np.inf, gamma=np.inf, bound=0.0, direction=0.0, rho_gain=np.inf, identity=0.0)
        for method, method_runs in runs.items():
            for run in method_runs:
                L_eta = run["L"] * run["eta"]
                g = gamma(run["rho"], run["c"], L_eta)
                # Thm 3.1 certificate: L_w(theta_{t+1}) <= L_w(theta_t) - eta Gamma ||g0||^2, 1e-9 relative slack.
                certified = run["excess"] - run["eta"] * g * run["g0_sq"]
                worst["cert"] = max(worst["cert"], np.max((run["excess_next"] - certified) / run["excess"], initial=-1))
                worst["gamma"] = min(worst["gamma"], np.min(g - (1 - run["c"] ** 2) / 2, initial=np.inf))
                # Thm 3.1 bound, for every horizon T: min_{t<T} ||g0_t||^2 <= 2 (L_w(theta0) - L_w*) / (eta (1-c^2) T).
                horizon = np.arange(1, len(run["g0_sq"]) + 1)
                bound = 2 * run["excess0"] / (run["eta"] * (1 - run["c_run"] ** 2) * horizon)
                worst["bound"] = max(worst["bound"], np.max(np.minimum.accumulate(run["g0_sq"]) / bound, initial=0))
                worst["direction"] = max(worst["direction"], np.max(np.abs(run["c_measured"] - run["c"]), initial=0),
                                         np.max(np.abs(run["rho_measured"] - run["rho"]), initial=0))
                if method == "raco":  # Thm 3.2, m = 2: the clip never lowers the cosine, and the identity on Gamma
                    rho_gain = run["rho_clipped"] - run["rho_unclipped"]
                    worst["rho_gain"] = min(worst["rho_gain"], np.min(rho_gain, initial=0))
                    gain = gamma(run["rho_clipped"], c, L_eta) - gamma(run["rho_unclipped"], c, L_eta)
                    predicted = c * (1 - L_eta) * rho_gain
                    worst["identity"] = max(worst["identity"], np.max(np.abs(gain - predicted), initial=0))
        steps = {m: [r["steps_to_tol"] for r in runs[m]] for m in DESCENT_METHODS}
        for method in DESCENT_METHODS:
            done = [s for s in steps[method] if s is not None]
            others = [m for m in DESCENT_METHODS if m != method]
            fastest = sum(s is not None and all(steps[o][k] is None or s <= steps[o][k] for o in others)
                          for k, s in enumerate(steps[method]))
            lam = np.concatenate([r["lam"] for r in runs[method]])
            rows.append(dict(
                dim=dim, method=method, converged=f"{len(done)}/{len(steps[method])}",
                mean_steps=np.mean(done) if done else np.nan, median_steps=np.median(done) if done else np.nan,
                fastest=fastest, interior=np.mean((lam > 1e-9) & (lam < 1 - 1e-9)) if method != "lw" else np.nan,
                interior_start=np.mean([1e-9 < r["lam"][0] < 1 - 1e-9 for r in runs[method]])
                if method != "lw" else np.nan,
                clip_changed=np.mean(np.concatenate([r["clip_changed"] for r in runs[method]]))
                if method == "raco" else np.nan,
                mean_rho=np.mean(np.concatenate([r["rho"] for r in runs[method]])) if method != "lw" else np.nan,
                min_gamma=min(np.min(gamma(r["rho"], r["c"], r["L"] * r["eta"])) for r in runs[method])))
        n_runs = len(seeds) * len(DESCENT_METHODS)
        # The min-norm is the square root of a Gram quadratic form, so rounding puts its floor near sqrt(1e-16) = 1e-8.
        claims += [
            Claim(f"[d={dim}] LW, CAGrad, RACO reach theta_w* (L_w - L_w* <= {tol:g} x initial)",
                  all(s is not None for m in steps for s in steps[m]),
                  f"{sum(s is not None for m in steps for s in steps[m])}/{n_runs} runs within {max_steps} steps"),
            Claim(f"[d={dim}] theta_w* is Pareto-critical (min-norm ||sum p_i g_i|| / max ||g_i|| < 1e-6)",
                  max(pareto_at_star) < 1e-6, f"largest {max(pareto_at_star):.1e}"),
            Claim(f"[d={dim}] Thm 3.1 certificate L_w(t+1) <= L_w(t) - eta Gamma ||g0||^2 at every step",
                  worst["cert"] <= 1e-9, f"largest (lhs - rhs) / (L_w - L_w*) = {worst['cert']:.1e}, tolerance 1e-9"),
            Claim(f"[d={dim}] Gamma >= (1 - c^2)/2 at every step", worst["gamma"] >= -1e-12,
                  f"smallest Gamma - (1 - c^2)/2 = {worst['gamma']:.3g}"),
            Claim(f"[d={dim}] Thm 3.1 bound on min_t ||grad L_w||^2 holds for every horizon T", worst["bound"] <= 1.0,
                  f"largest min_t ||g0||^2 / bound {worst['bound']:.2e}"),
            Claim(f"[d={dim}] solver's (c, rho) match d = g0 + c ||g0|| u measured from the vectors",
                  worst["direction"] < 1e-6, f"largest mismatch {worst['direction']:.1e}"),
            Claim(f"[d={dim}] RACO: rho~ >= rho at every step (m = 2)", worst["rho_gain"] >= -1e-12,
                  f"smallest rho~ - rho = {worst['rho_gain']:.2e}"),
            Claim(f"[d={dim}] Thm 3.2: Gamma(rho~) - Gamma(rho) = c (1 - L eta)(rho~ - rho)", worst["identity"] < 1e-12,
                  f"largest deviation {worst['identity']:.1e}"),
        ]
    return dict(rows=rows, claims=claims, traces=traces)


# ----------------------------------------------------------------------------------------------------------------
# 2. The worked example of SPEC section 2.

WORKED_EXAMPLE_EXPECTED = dict(lam=(0.356145, 6), rho=(0.3458, 4), rho_clipped=(0.9433, 4), gamma=(0.9335, 4),
                               gamma_clipped=(1.1427, 4))  # value, decimals printed in SPEC


def worked_example():
    """g1 = (1, -4), g2 = (-1, 1), w = (0.2, 0.8), c = 0.5, L_w = 3, eta = 0.1 through cagrad.coefficients.

    lam_grid is an independent check of the dual: Phi on a grid of 10^6 + 1 values of lam, from the vectors.
    """
    g, w, c, L_eta = np.array([[1.0, -4.0], [-1.0, 1.0]]), np.array([0.2, 0.8]), 0.5, 3 * 0.1
    _, info = coefficients(g @ g.T, w, "raco", c)
    g0 = w @ g
    lam = np.linspace(0, 1, 1_000_001)
    G_p = lam[:, None] * g[0] + (1 - lam[:, None]) * g[1]
    phi = G_p @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(G_p, axis=1)
    rho, rho_clipped = info["rho"], info["rho_clipped"]
    return dict(lam=float(info["p"][0]), lam_grid=float(lam[np.argmin(phi)]), rho=rho, rho_clipped=rho_clipped,
                gamma=gamma(rho, c, L_eta), gamma_clipped=gamma(rho_clipped, c, L_eta))


def check_worked_example(values):
    claims = [Claim("worked example: closed-form lam* agrees with a 1e-6 grid search",
                    abs(values["lam"] - values["lam_grid"]) <= 1e-6,
                    f"{values['lam']:.7f} vs {values['lam_grid']:.6f}")]
    for key, (expected, decimals) in WORKED_EXAMPLE_EXPECTED.items():
        ok = abs(values[key] - expected) <= 0.5 * 10.0**-decimals + 1e-12  # equal to the printed precision
        claims.append(Claim(f"worked example: {key} = {expected}", ok, f"computed {values[key]:.{decimals + 2}f}"))
    return claims


# ----------------------------------------------------------------------------------------------------------------
# 3. The classic two-objective toy (CAGrad paper, SPEC section 6).

STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
WEIGHTS = ((0.2, 0.8), (0.5, 0.5), (0.8, 0.2))
_EPS = 5e-6
REACH = 0.05  # an end point this close to the Pareto set (or to its weighted target in x1) has reached it


def toy_losses(x):
    """(f1, f2) at x: (..., 2) -> two (...) tensors. Above x2 = 0 (c1 > 0) each has a narrow log crease (|.| clamped
    at eps, so gradients up to ~1/eps) that can trap a run; below (c2 > 0) each is a bowl, centred at x1 = +7 for f1
    and x1 = -7 for f2: the two pull x1 apart, and between the two centres lies the Pareto set."""
    x1, x2 = x[..., 0], x[..., 1]
    c1 = torch.tanh(x2 / 2).clamp(min=0)
    c2 = torch.tanh(-x2 / 2).clamp(min=0)
    f1 = (c1 * (torch.log((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs().clamp(min=_EPS)) + 6)
          + c2 * (((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20))
    f2 = (c1 * (torch.log((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs().clamp(min=_EPS)) + 6)
          + c2 * (((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20))
    return f1, f2


def toy_gradients(x):
    """x: (R, 2) -> losses (R, 2) and per-objective gradients (R, 2 objectives, 2 coordinates); rows independent."""
    x = torch.as_tensor(x, dtype=torch.float64).detach().requires_grad_(True)
    f1, f2 = toy_losses(x)
    g1, = torch.autograd.grad(f1.sum(), x, retain_graph=True)
    g2, = torch.autograd.grad(f2.sum(), x)
    return torch.stack([f1, f2], 1).detach(), torch.stack([g1, g2], 1)


def pareto_set(x1):
    """The exact Pareto-critical points below the plane, x1: (k,) in [-7, 7] -> (k, 2) numpy.

    There c1 = 0 and df1/dx1 = c2 (x1 - 7)/5, df2/dx1 = c2 (x1 + 7)/5, so only p = ((x1 + 7)/14, (7 - x1)/14) cancels
    the x1-gradients; x2 is where that mixture's x2-gradient vanishes as well (one sign change on [-9, -7.8], found
    by bisection). It bends from x2 = -8.355 at x1 = 0 to -8.434 at x1 = +-7: SPEC's segment is its x1 = 0 level.
    The weighted optimum for w is the point with p = w, i.e. x1 = 7 (w1 - w2).
    """
    x1 = torch.as_tensor(x1, dtype=torch.float64)
    p1 = (x1 + 7) / 14

    def residual(x2):
        _, G = toy_gradients(torch.stack([x1, x2], 1))
        return p1 * G[:, 0, 1] + (1 - p1) * G[:, 1, 1]

    low, high = torch.full_like(x1, -9.0), torch.full_like(x1, -7.8)
    sign_low = residual(low).sign()
    for _ in range(60):
        mid = (low + high) / 2
        same = residual(mid).sign() == sign_low
        low, high = torch.where(same, mid, low), torch.where(same, high, mid)
    return torch.stack([x1, (low + high) / 2], 1).numpy()


def distance_to_curve(point, curve):
    """Euclidean distance from point (2,) to the polyline through curve (k, 2)."""
    start, segment = curve[:-1], np.diff(curve, axis=0)
    along = np.clip(np.einsum("kj,kj->k", point - start, segment) / np.einsum("kj,kj->k", segment, segment), 0, 1)
    return float(np.min(np.linalg.norm(start + along[:, None] * segment - point, axis=1)))


def run_cagrad_toy(methods=METHODS, starts=STARTS, weights=WEIGHTS, steps=1000, lr=0.3, beta2=0.9, c=0.4):
    """Every (method, weight, start) at once: one (R, 2) tensor of points, one Adam (it acts elementwise, so this is
    R independent runs), d written into x.grad. Two departures from the original (lr 1e-3, 100 000 steps):
    - Adam's steps have size ~lr whatever the gradient, so a constant lr big enough to cross the plane in a few
      hundred steps leaves the iterate rattling around the optimum; cosine decay to 0 lets it settle.
    - beta2 = 0.9 instead of 0.999: the log terms above the plane have cliffs with gradients up to ~1/eps, and a
      long second-moment memory keeps dividing by them for thousands of steps after the iterate has left, so the
      walk along the valley to the weighted optimum crawls and where a run stops depends on lr (with 0.999, lr 0.4
      to 0.7 and 1000 steps left some LW/CAGrad/RACO runs short of their target or stalled on the x2 = 0 kink).
      With 0.9 every lr from 0.05 to 1 reached the targets in 1000 steps.

    Returns paths (methods, weights, starts, steps + 1, 2) numpy, and per method the fraction of steps with an
    interior dual (0 < lam < 1) and with the clip changing the direction.
    """
    grid = [(m, w, s) for m in methods for w in weights for s in starts]
    x = torch.tensor([s for _, _, s in grid], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=lr, betas=(0.9, beta2))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    paths, interior, clip_changed = [x.detach().clone()], np.zeros(len(grid)), np.zeros(len(grid))
    for _ in range(steps):
        _, G = toy_gradients(x)
        a = torch.zeros(len(grid), 2, dtype=torch.float64)
        for r, (method, w, _) in enumerate(grid):
            a[r], info = coefficients(G[r] @ G[r].T, w, method, c)
            if "p" in info and method != "mgda":
                p = info["p"].numpy()
                interior[r] += 1e-9 < p[0] < 1 - 1e-9
                p_tilde = info["p_clipped"].numpy() if "p_clipped" in info else p
                clip_changed[r] += np.abs(p_tilde / max(p_tilde.sum(), 1e-300) - p).max() > 1e-9
        x.grad = torch.einsum("ri,rij->rj", a, G)  # d = sum_i a_i g_i, handed to Adam as the gradient
        optimizer.step()
        schedule.step()
        paths.append(x.detach().clone())
    shape = (len(methods), len(weights), len(starts))
    per_method = lambda v: dict(zip(methods, (v.reshape(shape) / steps).mean(axis=(1, 2))))
    return dict(methods=methods, weights=weights, starts=starts,
                paths=torch.stack(paths, 1).numpy().reshape(*shape, steps + 1, 2),
                interior=per_method(interior), clip_changed=per_method(clip_changed))


def toy_table(result):
    """One row per (method, weight, start): end point, (f1, f2), distance to the exact Pareto set, the Pareto
    measure min_p ||sum p_i g_i|| / max ||g_i||, and |x1 - 7 (w1 - w2)| (how far from the point the weights ask)."""
    curve = pareto_set(torch.linspace(-7, 7, 141))
    rows = []
    for i, method in enumerate(result["methods"]):
        for j, w in enumerate(result["weights"]):
            for k, start in enumerate(result["starts"]):
                end = result["paths"][i, j, k, -1]
                losses, G = toy_gradients(end[None])
                rows.append(dict(method=method, w=w, start=start, end=end, f=losses[0].numpy(),
                                 distance=distance_to_curve(end, curve),
                                 pareto=min_norm_ratio(G[0] @ G[0].T), x1_error=abs(end[0] - 7 * (w[0] - w[1]))))
    return rows


def check_toy(rows, reach=REACH):
    """What holds on the toy (run it and look): every method ends on the Pareto set, but only LW, CAGrad and RACO end
    at the weighted optimum (MGDA ignores w; PCGrad's end depends on w but is not its optimum); RACO's end points are
    ordered along the front as the weights are. reach: the distance that counts as "on it" (at the defaults every
    method ends within 1e-4 of the exact set, so 0.05 only absorbs other lr/step choices)."""
    claims = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        claims.append(Claim(f"toy: {method} ends within {reach} of the Pareto set from every start and weight",
                            max(r["distance"] for r in mine) <= reach,
                            f"largest {max(r['distance'] for r in mine):.4f}"))
        if method in DESCENT_METHODS:
            claims.append(Claim(f"toy: {method} ends at its weighted optimum, |x1 - 7 (w1 - w2)| <= {reach}",
                                max(r["x1_error"] for r in mine) <= reach,
                                f"largest {max(r['x1_error'] for r in mine):.4f}"))
    raco = [r for r in rows if r["method"] == "raco"]
    if raco:
        end_x1 = {}  # start -> end x1 for increasing w1
        for r in sorted(raco, key=lambda r: r["w"][0]):
            end_x1.setdefault(r["start"], []).append(r["end"][0])
        claims.append(Claim("toy: raco's end points move along the front with w1 (x1 rises, f1 falls), every start",
                            all(np.all(np.diff(x1s) > 0) for x1s in end_x1.values()),
                            "end x1 by increasing w1: " + "; ".join(", ".join(f"{x:.2f}" for x in x1s)
                                                                      for x1s in end_x1.values())))
    return claims


# ----------------------------------------------------------------------------------------------------------------
# Figures (matplotlib is imported here only, so the checks run without it).

COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange")
TITLES = dict(lw="DPO-LW (d = g0)", cagrad="CAGrad", raco="RACO (CAGrad-Clip)", mgda="MGDA (ignores w)",
              pcgrad="PCGrad")


def plot_toy(result, out):
    """Two figures, one panel per method: trajectories in parameter space over the mean-loss contours, and in
    objective space with the Pareto front. Colour = user weight; the diamond marks the point those weights ask for.
    Line width shrinks with the weight index so that identical paths (MGDA ignores w) show as nested stripes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    methods, weights, starts, paths = result["methods"], result["weights"], result["starts"], result["paths"]
    curve = pareto_set(torch.linspace(-7, 7, 281))
    targets = pareto_set(torch.tensor([7 * (w[0] - w[1]) for w in weights]))
    grid = torch.linspace(-10, 10, 241, dtype=torch.float64)
    X1, X2 = torch.meshgrid(grid, grid, indexing="xy")
    mean_loss = (sum(toy_losses(torch.stack([X1, X2], -1)))).numpy() / 2
    to_objectives = lambda xy: toy_gradients(xy.reshape(-1, 2))[0].numpy().reshape(xy.shape)
    legend = [Line2D([], [], color="k", lw=3, label="Pareto set / front")]
    legend += [Line2D([], [], color=COLOURS[j], lw=2, marker="D", mfc="none", ms=9,
                      label=f"w = {w} (diamond: its target)") for j, w in enumerate(weights)]
    legend += [Line2D([], [], ls="", marker="o", color="k", label="start"),
               Line2D([], [], ls="", marker="*", color="grey", mec="k", ms=13, label="end")]
    written = []
    for space in ("parameter", "objective"):
        fig, axes = plt.subplots(1, len(methods), figsize=(4.3 * len(methods), 5.2), squeeze=False)
        for i, (ax, method) in enumerate(zip(axes[0], methods)):
            if space == "parameter":
                ax.contourf(X1.numpy(), X2.numpy(), mean_loss, levels=30, cmap="Greys", alpha=0.5)
                ax.plot(curve[:, 0], curve[:, 1], "k-", lw=3)
                ax.set(xlim=(-10, 10), ylim=(-10, 10), xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
                transform, marks = (lambda xy: xy), targets
            else:
                front = to_objectives(curve)
                ax.plot(front[:, 0], front[:, 1], "k-", lw=3)
                ax.set(xlim=(-21, 9), ylim=(-21, 9), xlabel="$f_1$", ylabel="$f_2$", aspect="equal")
                transform, marks = to_objectives, to_objectives(targets)
            for j, w in enumerate(weights):
                colour = COLOURS[j % len(COLOURS)]
                ax.plot(*marks[j], "D", ms=11, mfc="none", mec=colour, mew=2, zorder=4)
                for k in range(len(starts)):
                    path = transform(paths[i, j, k])
                    ax.plot(path[:, 0], path[:, 1], "-", color=colour, lw=2.8 - 0.8 * j, alpha=0.85)
                    ax.plot(*path[-1], "*", color=colour, ms=13, mec="k", mew=0.6, zorder=5)
                    ax.plot(*path[0], "o", color="k", ms=6)
            ax.set_title(TITLES.get(method, method))
        fig.legend(handles=legend, loc="lower center", ncol=len(legend), frameon=False)
        fig.suptitle(f"CAGrad toy, {space} space: MGDA and PCGrad stop at *a* Pareto point; "
                     "LW, CAGrad and RACO at the one the weights ask for (diamonds)")
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        path = Path(out) / f"toy_{space}_space.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_quadratics(traces, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({d for d, _ in traces})
    fig, axes = plt.subplots(2, len(dims), figsize=(4.5 * len(dims), 7.5), squeeze=False)
    for col, dim in enumerate(dims):
        for method, colour in zip(DESCENT_METHODS, COLOURS):
            run = traces[(dim, method)]
            axes[0, col].semilogy(run["excess"], color=colour, label=TITLES[method])
            T = np.arange(1, len(run["g0_sq"]) + 1)
            axes[1, col].loglog(T, np.minimum.accumulate(run["g0_sq"]), color=colour, label=TITLES[method])
            axes[1, col].loglog(T, 2 * run["excess0"] / (run["eta"] * (1 - run["c_run"] ** 2) * T), "--",
                                color=colour, lw=0.8)
        axes[0, col].set(title=f"d = {dim}, first seed: $L_w(\\theta_t) - L_w^*$", xlabel="iteration t")
        axes[1, col].set(title=r"min$_{t<T}\,\|\nabla L_w(\theta_t)\|^2$ and Thm 3.1's bound (dashed)", xlabel="T")
        axes[0, col].legend()
    fig.tight_layout()
    path = Path(out) / "quadratics_convergence.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------

def print_table(rows, columns):
    """rows: list of dicts; columns: list of (header, key, format). NaN prints as "-" (not applicable)."""
    def cell(value, fmt):
        return "-" if isinstance(value, float) and math.isnan(value) else fmt.format(value)

    cells = [[header for header, _, _ in columns]] + [[cell(r[key], fmt) for _, key, fmt in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="out/toy", help="folder for the PNG figures")
    parser.add_argument("--quick", action="store_true", help="fewer seeds and dimensions, shorter toy runs")
    parser.add_argument("--c", type=float, default=0.4, help="CAGrad radius c in [0, 1)")
    parser.add_argument("--eta-scale", type=float, default=0.5, help="quadratics: eta = eta_scale / L, in (0, 1]")
    parser.add_argument("--seeds", type=int, default=10, help="quadratics: random instances per dimension")
    parser.add_argument("--steps", type=int, default=1000, help="toy: Adam steps per run (500 with --quick)")
    parser.add_argument("--lr", type=float, default=0.3, help="toy: Adam's peak learning rate (cosine decay to 0)")
    parser.add_argument("--beta2", type=float, default=0.9, help="toy: Adam's second-moment decay (see run_cagrad_toy)")
    args = parser.parse_args(argv)
    started = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    dims, seeds = ((2, 20), range(3)) if args.quick else ((2, 50, 100), range(args.seeds))

    quad = check_quadratics(dims, seeds, c=args.c, eta_scale=args.eta_scale)
    print(f"== 1. Two convex quadratics, c = {args.c}, eta = {args.eta_scale} / L, {len(seeds)} seeds per dimension:"
          " iterations to L_w - L_w* <= 1e-10 x initial")
    print_table(quad["rows"], [("dim", "dim", "{}"), ("method", "method", "{}"), ("reached", "converged", "{}"),
                               ("mean iters", "mean_steps", "{:.1f}"), ("median", "median_steps", "{:.0f}"),
                               ("fastest", "fastest", "{}"), ("dual interior", "interior", "{:.1%}"),
                               ("... at theta0", "interior_start", "{:.0%}"),
                               ("clip changes d", "clip_changed", "{:.1%}"), ("mean rho used", "mean_rho", "{:.3f}"),
                               ("min Gamma", "min_gamma", "{:.3f}")])
    example = worked_example()
    print("\n== 2. Worked example (SPEC section 2): g1 = (1, -4), g2 = (-1, 1), w = (0.2, 0.8), c = 0.5, L eta = 0.3")
    print("  " + "  ".join(f"{k} = {v:.6f}" for k, v in example.items()))

    toy = run_cagrad_toy(steps=min(args.steps, 500) if args.quick else args.steps, lr=args.lr, beta2=args.beta2,
                         c=args.c)
    rows = toy_table(toy)
    print(f"\n== 3. CAGrad toy, Adam (lr {args.lr}, cosine decay, beta2 {args.beta2}), {toy['paths'].shape[3] - 1}"
          f" steps, c = {args.c}")
    print_table([dict(r, w=str(r["w"]), start=str(r["start"]), x=f"({r['end'][0]:.3f}, {r['end'][1]:.3f})",
                      f_=f"({r['f'][0]:.3f}, {r['f'][1]:.3f})", reached="yes" if r["distance"] <= REACH else "no")
                 for r in rows],
                [("method", "method", "{}"), ("w", "w", "{}"), ("start", "start", "{}"), ("end x", "x", "{}"),
                 ("(f1, f2)", "f_", "{}"), ("dist to Pareto set", "distance", "{:.4f}"), ("on it", "reached", "{}"),
                 ("min-norm ratio", "pareto", "{:.1e}"), ("|x1 - 7(w1-w2)|", "x1_error", "{:.3f}")])
    print("  fraction of steps with an interior dual: "
          + ", ".join(f"{m} {v:.1%}" for m, v in toy["interior"].items() if m in ("cagrad", "raco"))
          + f"; with the clip changing RACO's direction: {toy['clip_changed'].get('raco', math.nan):.1%}")

    figures = plot_toy(toy, args.out) + [plot_quadratics(quad["traces"], args.out)]
    claims = quad["claims"] + check_worked_example(example) + check_toy(rows)
    print("\n== Claims")
    for claim in claims:
        print(f"  [{'PASS' if claim.passed else 'FAIL'}] {claim.name}  ({claim.detail})")
    print(f"\nfigures: {', '.join(str(f) for f in figures)}\nruntime {time.time() - started:.1f} s")
    failed = [claim for claim in claims if not claim.passed]
    for claim in failed:
        print(f"CLAIM FAILED: {claim.name} ({claim.detail})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # every tensor here is tiny: on a small CPU, intra-op threads cost more than they save
    sys.exit(main())
