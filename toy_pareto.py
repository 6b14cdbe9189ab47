"""The theory of RACO made visible and checked, on problems small enough to know the answer exactly.

Thm 3.1 and 3.2 of arXiv 2602.02495 step by step on convex quadratics (check_quadratics), a worked example
(docs/method.md works it by hand), and the CAGrad paper's toy (run_cagrad_toy; Liu et al. 2021), whose figures
show MGDA and PCGrad landing on *some* Pareto point while LW, CAGrad and RACO land on the one the weights ask for.

    python toy_pareto.py [--out out/toy] [--quick]  # tables; PNGs to --out; exit 1 naming every failed claim
"""

import argparse
import itertools
import math
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

from cagrad import METHODS, coefficients
from harness.command_line import THREADS_HELP, OneLineParser, check_c, check_flags, run_command, use_threads
from harness.run_directory import check_writable

Claim = namedtuple("Claim", "name passed detail")
DESCENT_METHODS = ("lw", "cagrad", "raco")  # the three that target theta_w*; MGDA and PCGrad do not


def gamma(rho, c, L_eta):
    """Thm 3.1's per-step decrease factor Gamma(rho) = 1 + c rho - (L eta / 2)(1 + c^2 + 2 c rho).
    From the descent lemma with d = g0 + c ||g0|| u, rho = cos(g0, u): <g0, d> = ||g0||^2 (1 + c rho) and
    ||d||^2 = ||g0||^2 (1 + c^2 + 2 c rho), so L_w(theta - eta d) <= L_w(theta) - eta Gamma ||g0||^2."""
    return 1.0 + c * rho - 0.5 * L_eta * (1.0 + c * c + 2.0 * c * rho)


def min_norm_ratio(H):
    """min over the simplex of ||sum_i p_i g_i|| / max_i ||g_i||: zero exactly at Pareto-critical points."""
    _, info = coefficients(H, np.full(len(H), 1.0 / len(H)), "mgda")
    return info["direction_norm"] / max(float(info["grad_norms"].max()), 1e-300)


# 1. Convex quadratics: every quantity of Section 3 is computable exactly.

def random_quadratics(dim, seed):
    """Two objectives L_i(theta) = 0.5 (theta - t_i)^T A_i (theta - t_i) >= 0 with distant minimisers t_i, weights
    w_1 ~ U(0.1, 0.9), and the exact weighted problem: A_w = sum w_i A_i, its minimiser theta_star, L = lambda_max.
    A_i = Q_i diag(e_i) Q_i^T with independent random rotations (so the objectives disagree in direction, not just in
    target) and eigenvalues log-uniform in [0.05, 1]: L_w's condition number is at most 20, which keeps runs short."""
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


def dual_facts(info):
    """What cagrad.diagnostics says of a step: is its dual interior (not a vertex), and did RACO's clip turn the
    direction? False where the method solves no dual, or does not clip."""
    return bool(info.get("interior", 0.0)), bool(info.get("clip_changed", 0.0))


def descend(problem, method, c, eta, max_steps, tol):
    """Plain gradient steps theta <- theta - eta d, d = sum_i a_i g_i with a from cagrad.coefficients, until
    L_w - L_w* <= tol (L_w(theta0) - L_w*). Not much further: the solver sees g0 only through the Gram matrix,
    ||g0||^2 = w^T H w, which carries an absolute error ~1e-16 max ||g_i||^2; near theta_w* the g_i nearly cancel
    (w1 g1 = -w2 g2 there), and once ||g0|| / ||g_i|| < ~1e-7 (excess ~1e-14) its rho is rounding noise.
    Returns (log, steps_to_tol or None): the log's arrays hold one entry per step (eta and L eta too, so that runs
    concatenate). excess = L_w - L_w* is exact as 0.5 e^T A_w e, no cancellation near the end; c = rho = 0 where
    d = g0, but RACO's cosines with and without the clip are kept there too."""
    A, targets, w, A_w, theta_star = (problem[k] for k in ("A", "targets", "w", "A_w", "theta_star"))
    theta, excess, log, L_eta = problem["theta0"].copy(), [], [], problem["L"] * eta
    for step in range(max_steps + 1):
        e = theta - theta_star
        excess.append(0.5 * e @ A_w @ e)
        if excess[-1] <= tol * excess[0] or step == max_steps:
            break
        G = np.einsum("ijk,ik->ij", A, theta - targets)  # g_i = A_i (theta - t_i), (2, n)
        a, info = coefficients(G @ G.T, w, method, c)
        a, (interior, clip_changed) = a.numpy(), dual_facts(info)
        g0, d = w @ G, a @ G
        u = d - g0
        fell_back = method == "lw" or np.array_equal(a, w)  # d = g0: the c rho terms vanish from Gamma
        c_used, rho_used = (0.0, 0.0) if fell_back else (c, info["rho_clipped" if method == "raco" else "rho"])
        rho_measured = 0.0 if fell_back else g0 @ u / (np.linalg.norm(g0) * np.linalg.norm(u))
        log.append(dict(
            g0_sq=g0 @ g0, c=c_used, rho=rho_used, eta=eta, L_eta=L_eta, interior=interior, clip_changed=clip_changed,
            # The same (c, rho) measured from the vectors themselves, to check the solver's bookkeeping.
            mismatch=max(abs(np.linalg.norm(u) / np.linalg.norm(g0) - c_used), abs(rho_measured - rho_used)),
            rho_clipped=info.get("rho_clipped", np.nan), rho_unclipped=info.get("rho", np.nan)))
        theta = theta - eta * d
    log = {k: np.array([entry[k] for entry in log], dtype=float) for k in log[0]}
    T, c_run = np.arange(1, len(excess)), 0.0 if method == "lw" else c  # LW's d is g0: its bound holds with c = 0
    log.update(excess=np.array(excess[:-1]), excess_next=np.array(excess[1:]),
               min_g0_sq=np.minimum.accumulate(log["g0_sq"]), bound=2 * excess[0] / (eta * (1 - c_run**2) * T))
    return log, (len(excess) - 1 if excess[-1] <= tol * excess[0] else None)


def check_quadratics(dims=(2, 50, 100), seeds=range(10), c=0.4, eta_scale=0.5, max_steps=3000, tol=1e-10):
    """Run LW, CAGrad and RACO on random_quadratics(dim, seed) with eta = eta_scale / L; check Section 3. Returns the
    printed table's rows (header -> cell), the claims, and each (dim, method)'s first log for the figure."""
    rows, claims, traces = [], [], {}
    pool = lambda logs: {k: np.concatenate([log[k] for log in logs]) for k in logs[0]}  # several runs' steps as one
    for dim in dims:
        logs, steps, pareto_at_star = {m: [] for m in DESCENT_METHODS}, {m: [] for m in DESCENT_METHODS}, []
        for problem in (random_quadratics(dim, seed) for seed in seeds):
            G_star = np.einsum("ijk,ik->ij", problem["A"], problem["theta_star"] - problem["targets"])
            pareto_at_star.append(min_norm_ratio(G_star @ G_star.T))
            for method in DESCENT_METHODS:
                log, steps_to_tol = descend(problem, method, c, eta_scale / problem["L"], max_steps, tol)
                logs[method].append(log)
                steps[method].append(steps_to_tol)
        traces.update({(dim, method): logs[method][0] for method in DESCENT_METHODS})
        for method in DESCENT_METHODS:
            done, pooled, dual = [s for s in steps[method] if s is not None], pool(logs[method]), method != "lw"
            fastest = sum(s is not None and all(steps[o][k] is None or s <= steps[o][k] for o in DESCENT_METHODS)
                          for k, s in enumerate(steps[method]))
            rows.append({  # "-": not applicable (LW solves no dual, only RACO clips)
                "dim": dim, "method": method, "reached": f"{len(done)}/{len(seeds)}",
                "mean iters": f"{np.mean(done):.1f}" if done else "-",
                "median": f"{np.median(done):.0f}" if done else "-", "fastest": fastest,
                "dual interior": f"{np.mean(pooled['interior']):.1%}" if dual else "-",
                "... at theta0": f"{np.mean([log['interior'][0] for log in logs[method]]):.0%}" if dual else "-",
                "clip changes d": f"{np.mean(pooled['clip_changed']):.1%}" if method == "raco" else "-",
                "mean rho used": f"{np.mean(pooled['rho']):.3f}" if dual else "-",
                "min Gamma": f"{np.min(gamma(pooled['rho'], pooled['c'], pooled['L_eta'])):.3f}"})
        every, raco = pool([log for m in DESCENT_METHODS for log in logs[m]]), pool(logs["raco"])
        g = gamma(every["rho"], every["c"], every["L_eta"])
        # Thm 3.1 certificate: L_w(theta_{t+1}) <= L_w(theta_t) - eta Gamma ||g0||^2, 1e-9 relative slack.
        certified = every["excess"] - every["eta"] * g * every["g0_sq"]
        certificate = np.max((every["excess_next"] - certified) / every["excess"], initial=-1)
        # Thm 3.1 bound, for every horizon T: min_{t<T} ||g0_t||^2 <= 2 (L_w(theta0) - L_w*) / (eta (1-c^2) T).
        bound = np.max(every["min_g0_sq"] / every["bound"], initial=0)
        mismatch = np.max(every["mismatch"], initial=0)
        # Thm 3.2, m = 2: the clip never lowers the cosine. (Gamma >= (1 - c^2)/2 and Gamma(rho~) - Gamma(rho) =
        # c (1 - L eta)(rho~ - rho) are algebra for any rho in [-1, 1] with L eta <= 1: nothing here to measure.)
        rho_gain = raco["rho_clipped"] - raco["rho_unclipped"]
        runs, reached = len(seeds) * len(DESCENT_METHODS), sum(s is not None for m in steps for s in steps[m])
        # The min-norm is the square root of a Gram quadratic form, so rounding puts its floor near sqrt(1e-16) = 1e-8.
        claims += [Claim(f"[d={dim}] {name}", passed, detail) for name, passed, detail in (
            (f"LW, CAGrad, RACO reach theta_w* (L_w - L_w* <= {tol:g} x initial)", reached == runs,
             f"{reached}/{runs} runs within {max_steps} steps"),
            ("theta_w* is Pareto-critical (min-norm ||sum p_i g_i|| / max ||g_i|| < 1e-6)",
             max(pareto_at_star) < 1e-6, f"largest {max(pareto_at_star):.1e}"),
            ("Thm 3.1 certificate L_w(t+1) <= L_w(t) - eta Gamma ||g0||^2 at every step", certificate <= 1e-9,
             f"largest (lhs - rhs) / (L_w - L_w*) = {certificate:.1e}, tolerance 1e-9"),
            ("Thm 3.1 bound on min_t ||grad L_w||^2 holds for every horizon T", bound <= 1.0,
             f"largest min_t ||g0||^2 / bound {bound:.2e}"),
            ("solver's (c, rho) match d = g0 + c ||g0|| u measured from the vectors", mismatch < 1e-6,
             f"largest mismatch {mismatch:.1e}"),
            ("RACO: rho~ >= rho at every step (m = 2)", np.min(rho_gain, initial=0) >= -1e-12,
             f"smallest rho~ - rho = {np.min(rho_gain, initial=0):.2e}"))]
    return dict(rows=rows, claims=claims, traces=traces)


# 2. The worked example (docs/method.md, "How toy_pareto.py checks these").

def worked_example():
    """g1 = (1, -4), g2 = (-1, 1), w = (0.2, 0.8), c = 0.5, L = 3, eta = 0.1 through cagrad.coefficients; lam_grid,
    an independent check of the dual, minimises Phi over 10^6 + 1 values of lam, computed from the vectors."""
    g, w, c, L_eta = np.array([[1.0, -4.0], [-1.0, 1.0]]), np.array([0.2, 0.8]), 0.5, 3 * 0.1
    _, info = coefficients(g @ g.T, w, "raco", c)
    g0 = w @ g
    lam = np.linspace(0, 1, 1_000_001)
    G_p = lam[:, None] * g[0] + (1 - lam[:, None]) * g[1]
    phi = G_p @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(G_p, axis=1)
    return dict(lam=float(info["p"][0]), lam_grid=float(lam[np.argmin(phi)]), rho=info["rho"],
                rho_clipped=info["rho_clipped"], gamma=gamma(info["rho"], c, L_eta),
                gamma_clipped=gamma(info["rho_clipped"], c, L_eta))


def check_worked_example(values):
    expected = dict(lam=(0.356145, 6), rho=(0.3458, 4), rho_clipped=(0.9433, 4), gamma=(0.9335, 4),
                    gamma_clipped=(1.1427, 4))  # value, decimals printed in docs/method.md
    lam, lam_grid = values["lam"], values["lam_grid"]
    return [Claim("worked example: closed-form lam* agrees with a 1e-6 grid search", abs(lam - lam_grid) <= 1e-6,
                  f"{lam:.7f} vs {lam_grid:.6f}")] + [
        Claim(f"worked example: {key} = {value}", abs(values[key] - value) <= 0.5 * 10.0**-decimals + 1e-12,
              f"computed {values[key]:.{decimals + 2}f}")  # equal to the printed precision
        for key, (value, decimals) in expected.items()]


# 3. The classic two-objective toy (the CAGrad paper, Liu et al. 2021).

STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
WEIGHTS = ((0.2, 0.8), (0.5, 0.5), (0.8, 0.2))
_EPS = 5e-6
REACH = 0.05  # an end point this close to the Pareto set (or to its weighted target in x1) has reached it


def toy_losses(x):
    """(f1, f2) at x: (..., 2) -> two (...) tensors. Above x2 = 0 (c1 > 0) each has a narrow log crease (|.| clamped
    at eps, so gradients up to ~1/eps) that can trap a run; below (c2 > 0) each is a bowl, centred at x1 = +7 for f1
    and x1 = -7 for f2: the two pull x1 apart, and between the two centres lies the Pareto set."""
    x1, x2 = x[..., 0], x[..., 1]
    c1, c2 = torch.tanh(x2 / 2).clamp(min=0), torch.tanh(-x2 / 2).clamp(min=0)
    f1 = (c1 * (torch.log((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs().clamp(min=_EPS)) + 6)
          + c2 * (((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20))
    f2 = (c1 * (torch.log((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs().clamp(min=_EPS)) + 6)
          + c2 * (((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20))
    return f1, f2


def toy_gradients(x):
    """x: (R, 2) -> losses (R, 2) and per-objective gradients (R, 2 objectives, 2 coordinates); rows independent."""
    x = torch.as_tensor(x, dtype=torch.float64).detach().requires_grad_(True)
    losses = toy_losses(x)
    G = [torch.autograd.grad(f.sum(), x, retain_graph=True)[0] for f in losses]  # sum: the rows do not interact
    return torch.stack(losses, 1).detach(), torch.stack(G, 1)


def pareto_set(x1):
    """The exact Pareto-critical points below the plane, x1: (k,) in [-7, 7] -> (k, 2) numpy. There c1 = 0 and
    df1/dx1 = c2 (x1 - 7)/5, df2/dx1 = c2 (x1 + 7)/5, so only p = ((x1 + 7)/14, (7 - x1)/14) cancels the x1-gradients;
    x2 is where that mixture's x2-gradient vanishes as well (one sign change on [-9, -7.8], found by bisection). It
    bends from x2 = -8.355 at x1 = 0 to -8.434 at x1 = +-7: the segment x2 = -8.3552 usually quoted for this toy is
    its x1 = 0 level. The weighted optimum for w is the point with p = w, i.e. x1 = 7 (w1 - w2)."""
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


def run_cagrad_toy(methods=METHODS, starts=STARTS, weights=WEIGHTS, steps=1000, lr=0.3, beta2=0.9, c=0.4):
    """Every (method, weight, start) at once: one (R, 2) tensor of points, one Adam (it acts elementwise, so this is
    R independent runs), d written into x.grad. Returns paths (methods, weights, starts, steps + 1, 2) and per method
    the fraction of steps with an interior dual and with the clip changing d. Two departures from the original (lr
    1e-3, 100 000 steps):
    - Adam's steps have size ~lr whatever the gradient, so a constant lr big enough to cross the plane in a few
      hundred steps leaves the iterate rattling around the optimum; cosine decay to 0 lets it settle.
    - beta2 = 0.9 instead of 0.999: the log terms above the plane have cliffs with gradients up to ~1/eps, and a
      long second-moment memory keeps dividing by them for thousands of steps after the iterate has left, so the
      walk along the valley to the weighted optimum crawls and where a run stops depends on lr (with 0.999, lr 0.4
      to 0.7 and 1000 steps left some LW/CAGrad/RACO runs short of their target or stalled on the x2 = 0 kink).
      With 0.9 every lr from 0.05 to 1 reached the targets in 1000 steps."""
    grid = list(itertools.product(methods, weights, starts))
    x = torch.tensor([s for _, _, s in grid], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=lr, betas=(0.9, beta2))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    paths, dual_steps = [x.detach().clone()], np.zeros((len(grid), 2))
    for _ in range(steps):
        _, G = toy_gradients(x)
        a = torch.zeros(len(grid), 2, dtype=torch.float64)
        for r, (method, w, _) in enumerate(grid):
            a[r], info = coefficients(G[r] @ G[r].T, w, method, c)
            dual_steps[r] += dual_facts(info)  # counts of steps with (an interior dual, the clip changing d)
        x.grad = torch.einsum("ri,rij->rj", a, G)  # d = sum_i a_i g_i, handed to Adam as the gradient
        optimizer.step()
        schedule.step()
        paths.append(x.detach().clone())
    shape = (len(methods), len(weights), len(starts))
    per_method = lambda v: dict(zip(methods, (v.reshape(shape) / steps).mean(axis=(1, 2))))
    return dict(methods=methods, weights=weights, starts=starts,
                paths=torch.stack(paths, 1).numpy().reshape(*shape, steps + 1, 2),
                interior=per_method(dual_steps[:, 0]), clip_changed=per_method(dual_steps[:, 1]))


def toy_table(result):
    """Per (method, weight, start): end, f = (f1, f2), distance to the exact Pareto set, pareto = min_norm_ratio,
    and x1_error = |x1 - 7 (w1 - w2)|, how far from the point the weights ask for."""
    ends, curve = result["paths"][..., -1, :].reshape(-1, 2), pareto_set(torch.linspace(-7, 7, 141))
    knot, segment = curve[:-1], np.diff(curve, axis=0)  # the set as a polyline: project each end on each segment
    along = np.clip(np.einsum("rkj,kj->rk", ends[:, None] - knot, segment) / (segment**2).sum(1), 0, 1)
    distance = np.linalg.norm(knot + along[..., None] * segment - ends[:, None], axis=-1).min(1)
    losses, G = toy_gradients(ends)
    runs = itertools.product(result["methods"], result["weights"], result["starts"])  # the order of paths' axes
    return [dict(method=method, w=w, start=start, end=end, f=f, distance=float(dist), pareto=min_norm_ratio(g @ g.T),
                 x1_error=abs(end[0] - 7 * (w[0] - w[1])))
            for (method, w, start), end, f, g, dist in zip(runs, ends, losses.numpy(), G, distance)]


def check_toy(rows, reach=REACH):
    """Every method ends on the Pareto set, only LW, CAGrad and RACO at the weighted optimum (MGDA ignores w; PCGrad's
    end depends on w but is not its optimum), RACO's ends in the weights' order. At the defaults every method ends
    within 1e-4 of the exact set: reach = 0.05, the distance that counts as "on it", absorbs other lr/step choices."""
    claims = []
    for method in dict.fromkeys(r["method"] for r in rows):
        worst = {key: max(r[key] for r in rows if r["method"] == method) for key in ("distance", "x1_error")}
        claims.append(Claim(f"toy: {method} ends within {reach} of the Pareto set from every start and weight",
                            worst["distance"] <= reach, f"largest {worst['distance']:.4f}"))
        if method in DESCENT_METHODS:
            claims.append(Claim(f"toy: {method} ends at its weighted optimum, |x1 - 7 (w1 - w2)| <= {reach}",
                                worst["x1_error"] <= reach, f"largest {worst['x1_error']:.4f}"))
    end_x1 = {}  # RACO's runs: start -> end x1 for increasing w1
    for r in sorted((r for r in rows if r["method"] == "raco"), key=lambda r: r["w"][0]):
        end_x1.setdefault(r["start"], []).append(r["end"][0])
    if end_x1:
        claims.append(Claim("toy: raco's end points move along the front with w1 (x1 rises, f1 falls), every start",
                            all(np.all(np.diff(x1s) > 0) for x1s in end_x1.values()), "end x1 by increasing w1: "
                            + "; ".join(", ".join(f"{x:.2f}" for x in x1s) for x1s in end_x1.values())))
    return claims


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
    for space, transform, limits, labels in (("parameter", lambda xy: xy, (-10, 10), ("$x_1$", "$x_2$")),
                                             ("objective", to_objectives, (-21, 9), ("$f_1$", "$f_2$"))):
        fig, axes = plt.subplots(1, len(methods), figsize=(4.3 * len(methods), 5.2), squeeze=False)
        for i, (ax, method) in enumerate(zip(axes[0], methods)):
            if space == "parameter":
                ax.contourf(X1.numpy(), X2.numpy(), mean_loss, levels=30, cmap="Greys", alpha=0.5)
            front, marks = transform(curve), transform(targets)
            ax.plot(front[:, 0], front[:, 1], "k-", lw=3)
            ax.set(xlim=limits, ylim=limits, xlabel=labels[0], ylabel=labels[1], aspect="equal")
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
        written.append(Path(out) / f"toy_{space}_space.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
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
            axes[1, col].loglog(T, run["min_g0_sq"], color=colour, label=TITLES[method])
            axes[1, col].loglog(T, run["bound"], "--", color=colour, lw=0.8)
        axes[0, col].set(title=f"d = {dim}, first seed: $L_w(\\theta_t) - L_w^*$", xlabel="iteration t")
        axes[1, col].set(title=r"min$_{t<T}\,\|\nabla L_w(\theta_t)\|^2$ and Thm 3.1's bound (dashed)", xlabel="T")
        axes[0, col].legend()
    fig.tight_layout()
    path = Path(out) / "quadratics_convergence.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(rows):
    """rows: dicts of header -> cell, printed right-aligned under their headers."""
    cells = [list(rows[0])] + [[str(cell) for cell in row.values()] for row in rows]
    widths = [max(map(len, column)) for column in zip(*cells)]
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def main(argv=None):
    parser = OneLineParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="out/toy", help="folder for the PNG figures")
    parser.add_argument("--quick", action="store_true", help="fewer seeds and dimensions, shorter toy runs")
    parser.add_argument("--c", type=float, default=0.4, help="CAGrad radius c in [0, 1)")
    parser.add_argument("--eta-scale", type=float, default=0.5, help="quadratics: eta = eta_scale / L, in (0, 1]")
    parser.add_argument("--seeds", type=int, default=10, help="quadratics: random instances per dimension")
    parser.add_argument("--steps", type=int, default=1000, help="toy: Adam steps per run (500 with --quick)")
    parser.add_argument("--lr", type=float, default=0.3, help="toy: Adam's peak learning rate (cosine decay to 0)")
    parser.add_argument("--beta2", type=float, default=0.9, help="toy: Adam's second-moment decay (see run_cagrad_toy)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    check_c(args.c)
    check_flags(args, [("eta_scale", 0 < args.eta_scale <= 1),
                       ("seeds", args.seeds > 0),  # --seeds 0 would check nothing and pass
                       ("steps", args.steps > 0), ("lr", 0 < args.lr < math.inf), ("beta2", 0 <= args.beta2 < 1),
                       ("threads", args.threads >= 0)])
    use_threads(args.threads)  # every tensor here is tiny: on a small CPU, intra-op threads cost more than they save
    check_writable(args.out)
    started = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    dims, seeds = ((2, 20), range(3)) if args.quick else ((2, 50, 100), range(args.seeds))
    quad = check_quadratics(dims, seeds, c=args.c, eta_scale=args.eta_scale)
    print(f"== 1. Two convex quadratics, c = {args.c}, eta = {args.eta_scale} / L, {len(seeds)} seeds per dimension:"
          " iterations to L_w - L_w* <= 1e-10 x initial")
    print_table(quad["rows"])
    example = worked_example()
    print("\n== 2. Worked example (docs/method.md): g1 = (1, -4), g2 = (-1, 1), w = (0.2, 0.8), c = 0.5, L eta = 0.3")
    print("  " + "  ".join(f"{k} = {v:.6f}" for k, v in example.items()))
    steps = min(args.steps, 500) if args.quick else args.steps
    toy = run_cagrad_toy(steps=steps, lr=args.lr, beta2=args.beta2, c=args.c)
    rows = toy_table(toy)
    print(f"\n== 3. CAGrad toy, Adam (lr {args.lr}, cosine decay, beta2 {args.beta2}), {steps} steps, c = {args.c}")
    pair = "({:.3f}, {:.3f})".format
    print_table([{"method": r["method"], "w": r["w"], "start": r["start"], "end x": pair(*r["end"]),
                  "(f1, f2)": pair(*r["f"]), "dist to Pareto set": f"{r['distance']:.4f}",
                  "on it": "yes" if r["distance"] <= REACH else "no", "min-norm ratio": f"{r['pareto']:.1e}",
                  "|x1 - 7(w1-w2)|": f"{r['x1_error']:.3f}"} for r in rows])
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
    sys.exit(run_command(main))
