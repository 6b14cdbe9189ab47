"""Score against KL on the embedded world: each method's frontier, and who is ahead at matched KL.

    python experiments/frontier.py          # 6 methods x 4 learning rates x 3 weights x 3 seeds, scored 5 times per run
    python experiments/frontier.py --quick  # lw, cagrad, raco; 3 learning rates; one weight; one seed (~80 s)

CAGrad's and RACO's step is d = g0 + c ||g0|| G~/||G~||, longer than DPO-LW's g0, so at one learning rate they move
further from the reference, and scores at unequal KL(pi || pi_ref) do not compare methods. The DPO paper's answer
(its Figure 2) is the reward-versus-KL frontier, used here for several objectives: every method trains at several
learning rates; every run is scored at checkpoints along the way (exact scores of samples at temperature 0.6; KL
from temperature-1 samples, as eval.py measures them); and a method's frontier at weights w is the best weighted
score w . scores it reached at KL at most k, f(k) = max{score_i : KL_i <= k}, the reference model counting as a
point at KL 0. Two methods are compared at matched KL: f_a(k) - f_b(k) on a grid of KL values that every seed of
both reached, mean and standard error over seeds. A method is better if its frontier is higher at every KL.
"""
import csv
import math
import os
import sys
import textwrap
import time

if __package__ in (None, ""):  # run as a script, python experiments/frontier.py: the project's modules are one up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import sweeps
from harness.checkpoints import checkpoints
from harness.checks import TRAIN_METHODS, weight_values
from harness.command_line import OneLineParser, run_command
from harness.metrics import mean_se
from harness.models import load_model
from harness.run_directory import write_json

QUICK = dict(methods="lw,cagrad,raco", lrs="2.5e-4,5e-4,1e-3", sweep="0.8", seeds="0", steps=60, prompts=32, samples=4,
             pairs=64, points=3)
FULL = dict(methods=",".join(TRAIN_METHODS), lrs="1e-4,2.5e-4,5e-4,1e-3", sweep="0.2,0.5,0.8", seeds="0,1,2",
            steps=100, prompts=64, samples=4, pairs=256, points=5)
KL_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # where frontiers are compared, within what both methods reached


def run_points(cfg, shared, args, names):
    """Train one run, keeping a checkpoint every steps / points steps, unless an identical run finished after the
    model and data were written; score every checkpoint (cached in the run's frontier.json). Returns one row per
    checkpoint: step, KL and the scores."""
    cache = os.path.join(cfg.out, "frontier.json")
    settings = sweeps.eval_settings(args)
    reused = sweeps.finished(cfg, shared["inputs_time"])
    if reused and os.path.isfile(cache) and sweeps.read_json(cache)["settings"] == settings:
        return sweeps.read_json(cache)["rows"], True
    if not reused:
        sweeps.train_run(cfg)
    rows = []
    for path in checkpoints(cfg.out):
        policy = load_model(os.path.join(path, "policy"), shared["device"])[1]
        rows.append({"method": cfg.method, "lr": cfg.lr, "seed": cfg.seed, "step": int(path.rsplit("-", 1)[1]),
                     **{f"w_{n}": w for n, w in zip(names, weight_values(cfg.weights))},
                     **sweeps.evaluate_policy(policy, shared, args, cfg)})
    write_json(cache, {"settings": settings, "rows": rows}, strict=False)
    return rows, reused


def reference_rows(shared, args):
    """The reference model scored once per seed (its samples follow the seed): every frontier starts at it, KL 0."""
    return [{"method": "reference", "lr": 0.0, "seed": seed, "step": 0,
             **sweeps.evaluate_policy(shared["reference"], shared, args,
                                      sweeps.train_config(args, shared["names"], seed=seed))}
            for seed in shared["seeds"]]


def point_config(args, names, method, w, lr, seed, runs, **fields):
    """The train.Config of one run that keeps --points checkpoints to score, in runs/<method>-w<w>-lr<lr>-s<seed>;
    `fields` override (conflict.py's c)."""
    weights = ",".join(f"{x:g}" for x in w)
    return sweeps.train_config(args, names, method=method, weights=weights, seed=seed, lr=lr,
                               save_every=max(1, args.steps // args.points), keep_checkpoints=args.points,
                               out=os.path.join(runs, f"{method}-w{weights.replace(',', '-')}-lr{lr:g}-s{seed}"),
                               **fields)


def run_frontier(args):
    from tqdm import tqdm
    started = time.time()
    shared = sweeps.prepare(args, QUICK, FULL, minimum=1)
    names, grid, seeds = shared["names"], shared["grid"], shared["seeds"]
    lrs = sweeps.learning_rates(args)
    with sweeps.quietly():
        rows = reference_rows(shared, args)
    runs = [(m, w, lr, seed) for seed in seeds for m in shared["methods"] for w in grid for lr in lrs]
    progress, reused_runs = tqdm(runs, desc="frontier", unit="run", dynamic_ncols=True), 0
    for method, w, lr, seed in progress:
        cfg = point_config(args, names, method, w, lr, seed, os.path.join(args.out, "runs"))
        with sweeps.quietly():
            points, reused = run_points(cfg, shared, args, names)
        rows += points
        reused_runs += reused
        progress.set_postfix_str(f"{method} w=({'-'.join(f'{x:g}' for x in w)}) lr {lr:g} seed {seed}: kl "
                                 + ", ".join(f"{p['kl']:.2f}" for p in points))
    progress.close()
    if reused_runs:
        print(f"{reused_runs} of {len(runs)} runs reused from {os.path.join(args.out, 'runs')}")
    report = write_report(rows, shared, lrs, args)
    print(report)
    plot_frontiers(rows, shared, os.path.join(args.out, "frontier.png"))
    print(f"frontier done in {time.time() - started:.0f} s: {args.out}/frontier.csv, frontier.md, frontier.png")
    return rows


def weighted(row, w, names):
    return sum(x * row[n] for x, n in zip(w, names))


def frontier(rows, method, w, seed, names):
    """The method's points at weights w and this seed, plus the reference at KL 0: a function k -> the row with the
    best weighted score among those with KL <= k (None below every point)."""
    points = [r for r in rows if r["seed"] == seed and (r["method"] == "reference" or (
        r["method"] == method and tuple(r[f"w_{n}"] for n in names) == w))]

    def best(k):
        reached = [r for r in points if r["kl"] <= k]
        return max(reached, key=lambda r: weighted(r, w, names)) if reached else None
    return best, max(r["kl"] for r in points)


def compare(rows, a, b, w, seeds, names):
    """At each KL of KL_GRID that every seed of both methods reached: (k, mean and standard error over seeds of
    f_a(k) - f_b(k)). The reference at KL 0 belongs to both, so both frontiers start at the same point."""
    fronts = {(m, s): frontier(rows, m, w, s, names) for m in (a, b) for s in seeds}
    reach = min(fronts[key][1] for key in fronts)
    out = []
    for k in (k for k in KL_GRID if k <= reach):
        diffs = [weighted(fronts[a, s][0](k), w, names) - weighted(fronts[b, s][0](k), w, names) for s in seeds]
        out.append((k, *mean_se(diffs)))
    return out


def write_report(rows, shared, lrs, args):
    """frontier.csv (every scored checkpoint), frontier.md (the matched-KL comparisons); returns the Markdown."""
    names, grid, seeds, methods = shared["names"], shared["grid"], shared["seeds"], shared["methods"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "frontier.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Score against KL on the embedded world: {' vs '.join(names)}", "",
             f"{len(methods)} methods x {len(lrs)} learning rates ({', '.join(f'{lr:g}' for lr in lrs)}) x "
             f"{len(grid)} weights x {len(seeds)} seeds, {args.steps} steps of {args.micro_batch} x {args.grad_accum} "
             f"pairs, beta {args.beta:g}, scored after every {max(1, args.steps // args.points)} steps; "
             f"{args.prompts} held-out prompts x {args.samples} samples. A frontier f(k) is the best weighted score "
             "at KL <= k over all of a method's learning rates and checkpoints; a cell is f_a(k) - f_b(k), mean ± "
             "standard error over seeds, at KL values every seed of both methods reached (so the columns differ).", ""]
    pairs = [(a, b) for a, b in [("raco", b) for b in methods if b != "raco"] + [("cagrad", "lw")]
             if {a, b} <= set(methods)]
    for w in grid:
        label = ":".join(f"{x:g}" for x in w)
        lines += [f"## Weights {label}", "", "| comparison | " + " | ".join(f"KL {k:g}" for k in KL_GRID) + " |",
                  "|---" * (len(KL_GRID) + 1) + "|"]
        for a, b in pairs:
            cells = {k: f"{mean:+.3f} ± {se:.3f}" if len(seeds) > 1 else f"{mean:+.3f}"
                     for k, mean, se in compare(rows, a, b, w, seeds, names)}
            lines.append(f"| {a} - {b} | " + " | ".join(cells.get(k, "-") for k in KL_GRID) + " |")
        reach = {m: min(frontier(rows, m, w, s, names)[1] for s in seeds) for m in methods}
        lines += ["", "Largest KL every seed reached: " + ", ".join(f"{m} {k:.2f}" for m, k in reach.items()) + ".",
                  ""]
    with open(os.path.join(args.out, "frontier.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def plot_frontiers(rows, shared, path):
    """Rows: the weighted score, then each objective, against KL; columns: the weights. Dots: every scored
    checkpoint; lines: each method's frontier, mean over seeds with a standard-error band (its objectives' values are
    those of the frontier's points)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, grid, seeds, methods = shared["names"], shared["grid"], shared["seeds"], shared["methods"]
    panels = ["weighted"] + list(names)
    width = max(6.0, 4.5 * len(grid))
    fig, axes = plt.subplots(len(panels), len(grid), figsize=(width, 3.2 * len(panels)), squeeze=False)
    colours = dict(zip(TRAIN_METHODS, ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple",
                                             "tab:brown")))
    for col, w in enumerate(grid):
        for m in methods:
            mine = [r for r in rows if r["method"] == m and tuple(r[f"w_{n}"] for n in names) == w]
            fronts = [frontier(rows, m, w, s, names) for s in seeds]
            ks = [k for k in sorted({0.0, *(r["kl"] for r in mine if r["kl"] > 0)}) if k <= min(f[1] for f in fronts)]
            for row, panel in enumerate(panels):
                value = (lambda r: weighted(r, w, names)) if panel == "weighted" else (lambda r: r[panel])
                axes[row, col].plot([r["kl"] for r in mine], [value(r) for r in mine], ".", color=colours[m],
                                    alpha=0.25, ms=4)
                stats = [mean_se([value(f[0](k)) for f in fronts]) for k in ks]
                mean = [s[0] for s in stats]
                se = [0.0 if math.isnan(s[1]) else s[1] for s in stats]
                axes[row, col].step(ks, mean, where="post", color=colours[m], label=m)
                axes[row, col].fill_between(ks, [a - b for a, b in zip(mean, se)], [a + b for a, b in zip(mean, se)],
                                            step="post", color=colours[m], alpha=0.15)
        for row, panel in enumerate(panels):
            axes[row, col].set(xscale="symlog", xlabel="KL(policy || reference)",
                               ylabel=f"{panel} score" if panel != "weighted" else "weighted score")
            axes[row, col].grid(alpha=0.3)
        axes[0, col].set_title(f"weights {':'.join(f'{x:g}' for x in w)}")
    axes[0, 0].legend(fontsize=7)
    spread = f"lines: mean over {len(seeds)} seeds, band: standard error" if len(seeds) > 1 else "one seed"
    fig.suptitle(textwrap.fill(f"Frontiers: the best weighted score at KL <= k ({spread}; dots: every scored "
                               "checkpoint)", width=int(width * 15)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    sweeps.add_arguments(p, QUICK, FULL)
    sweeps.add_checkpoint_arguments(p, QUICK, FULL)
    p.add_argument("--sweep", help=f"weights: of the first objective, or colon-separated vectors (default: "
                                   f"{FULL['sweep']}; quick {QUICK['sweep']})")
    p.add_argument("--out", default="out/frontier", help="the frontier's directory (default: %(default)s)")
    return sweeps.check_arguments(p.parse_args(argv))


def main(argv=None):
    return run_frontier(parse_args(argv))


if __name__ == "__main__":
    run_command(main, interrupted=sweeps.left_behind)
