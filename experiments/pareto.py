"""The Pareto sweep on the embedded world: every method over a range of weights and seeds, trained, sampled and
scored exactly, and compared as fronts, against the world's exact front.

    python experiments/pareto.py            # 6 methods x 5 weights x 3 seeds, quality vs conciseness (2 CPUs: ~20 min)
    python experiments/pareto.py --quick    # the same in miniature (about a minute)
    python experiments/pareto.py --objectives quality,conciseness,faithfulness --out out/pareto3  # three objectives
    python experiments/pareto.py --methods lw,cagrad,raco --micro-batch 2 --grad-accum 8 --solve-per micro_batch \
        --beta 0.2 --out out/pareto-authors     # the authors' regime: the dual solved on every 2-pair micro-batch

Each run is a train.py run; each trained policy is evaluated as eval.py evaluates a checkpoint (exact scores of
samples at temperature 0.6, KL to the reference, held-out pair accuracy). Per method it reports: the hypervolume
of its front (exact, 2-D or 3-D) and its share of the exact front's (world.exact_front: the best trade-off any
policy can reach), how much every point could still gain towards that front, weight fidelity (Spearman rank
correlation of a weight with its objective's score across the sweep), KL, which front dominates which, and for
CAGrad and RACO when the clip matters: how often the dual is interior, how often the clip changes the direction,
the cosine between the RACO and CAGrad directions, and the cosine between the objectives' gradients.
Runs already trained are reused, so an interrupted sweep continues.
"""
import csv
import math
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a script, python experiments/pareto.py: the project's modules are one up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import world
from experiments.sweeps import (CLIP_KEYS, add_arguments, check_arguments, eval_settings, evaluate_policy,
                                exact_hypervolume, finished, left_behind, prepare, quietly, read_json, run_diagnostics,
                                train_config, train_run)
from harness.checks import TRAIN_METHODS, weight_values
from harness.command_line import OneLineParser, run_command
from harness.metrics import (fraction_dominated, front_gain_2d, hypervolume_2d, hypervolume_3d, mean_std, pareto_front,
                             spearman)
from harness.models import load_model
from harness.run_directory import write_json

# The three-objective design: each objective leading once, each pair leading once, and the centre.
THREE = "0.6:0.2:0.2,0.2:0.6:0.2,0.2:0.2:0.6,0.4:0.4:0.2,0.4:0.2:0.4,0.2:0.4:0.4,0.3333:0.3333:0.3334"
QUICK = dict(methods=",".join(TRAIN_METHODS), sweep="0.1,0.5,0.9", seeds="0", steps=20, prompts=32,
             samples=2, pairs=128)
FULL = dict(methods=",".join(TRAIN_METHODS), sweep="0.1,0.3,0.5,0.7,0.9", seeds="0,1,2",
            steps=100, prompts=64, samples=4, pairs=256)


def sweep_point(cfg, shared, args):
    """Train one (method, weights, seed) unless it already finished, then evaluate it; the evaluation is cached too,
    so an interrupted sweep continues where it stopped. Returns (row, reused)."""
    summary_path, eval_path = os.path.join(cfg.out, "summary.json"), os.path.join(cfg.out, "eval.json")
    reused, names = finished(cfg, shared["inputs_time"]), shared["names"]
    if not reused:
        train_run(cfg)
    settings = eval_settings(args)
    if reused and os.path.isfile(eval_path) and read_json(eval_path)["settings"] == settings:
        return read_json(eval_path)["row"], True
    policy = load_model(os.path.join(cfg.out, "policy"), shared["device"])[1]
    row = {"method": cfg.method, "seed": cfg.seed, "steps": cfg.steps,
           **{f"w_{n}": w for n, w in zip(names, weight_values(cfg.weights))},
           **evaluate_policy(policy, shared, args, cfg),
           **run_diagnostics(cfg.out, names), "train_s": read_json(summary_path)["seconds"]}
    write_json(eval_path, {"settings": settings, "row": row}, strict=False)
    return row, reused


def run_pareto(args):
    from tqdm import tqdm
    started = time.time()
    s = prepare(args, QUICK, FULL, three=THREE)
    names, grid, seeds = s["names"], s["grid"], s["seeds"]
    with quietly():
        rows = [{"method": "reference", "seed": seed, "steps": 0, **{f"w_{n}": math.nan for n in names},
                 **evaluate_policy(s["reference"], s, args, train_config(args, names, seed=seed)),
                 "train_s": 0.0} for seed in seeds]  # the same prompts and sampling seeds as each seed's runs
    runs = [(m, w, seed) for seed in seeds for m in s["methods"] for w in grid]
    progress, reused_runs = tqdm(runs, desc="sweep", unit="run", dynamic_ncols=True), 0
    for method, w, seed in progress:
        tag = "-".join(f"{x:g}" for x in w)
        cfg = train_config(args, names, method=method, weights=",".join(f"{x:g}" for x in w), seed=seed,
                           out=os.path.join(args.out, "runs", f"{method}-w{tag}-s{seed}"))
        with quietly():
            row, reused = sweep_point(cfg, s, args)
        rows.append(row)
        reused_runs += reused
        progress.set_postfix_str(f"{method} w=({tag}) seed {seed}: "
                                 + " ".join(f"{n} {row[n]:.3f}" for n in names) + f" kl {row['kl']:.3f}")
    progress.close()
    if reused_runs:
        print(f"{reused_runs} of {len(runs)} runs reused from {os.path.join(args.out, 'runs')}")
    stats = analyse(rows, s["methods"], names, grid, seeds, s["front"])
    print(write_report(rows, stats, s["methods"], names, grid, seeds, s["front"], args))
    written = ["pareto.csv", "pareto.md", "pareto.png"]
    plot_fronts(rows, stats, s["methods"], names, grid, s["front"], os.path.join(args.out, "pareto.png"))
    if "raco" in s["methods"]:
        plot_clip(rows, names, grid, os.path.join(args.out, "clip.png"))
        written.append("clip.png")
    print(f"sweep done in {time.time() - started:.0f} s: {args.out}/{', '.join(written)}")
    return rows, stats


def analyse(rows, methods, names, grid, seeds, front):
    """Per method, lists over seeds: hypervolume from 0 (exact), its share of the exact front's, the mean gain
    towards the exact front along (1, 1) in the first two objectives, weight fidelity per objective; per pair of
    methods (a, b), the fraction of a's points dominated by b's front."""
    exact = exact_hypervolume(front, names)
    plane = [(v[0], v[1]) for v in front]  # the first two objectives' front (with three: where faithfulness is 1)
    points = {(m, seed): [next(tuple(r[n] for n in names) for r in rows if (r["method"], r["seed"]) == (m, seed)
                               and tuple(r[f"w_{n}"] for n in names) == w) for w in grid]
              for m in methods for seed in seeds}
    hypervolume = hypervolume_2d if len(names) == 2 else hypervolume_3d
    stats = {"hypervolume": {}, "share": {}, "gain": {}, "dominated": {}, "exact": exact,
             **{f"fidelity_{n}": {} for n in names}}
    for m in methods:
        stats["hypervolume"][m] = [hypervolume(points[m, s], (0.0,) * len(names)) for s in seeds]
        stats["share"][m] = [h / exact for h in stats["hypervolume"][m]]
        stats["gain"][m] = [sum(front_gain_2d(p[:2], plane) for p in points[m, s]) / len(grid) for s in seeds]
        for i, n in enumerate(names):
            stats[f"fidelity_{n}"][m] = [spearman([w[i] for w in grid], [p[i] for p in points[m, s]]) for s in seeds]
        for b in methods:
            stats["dominated"][m, b] = [fraction_dominated(points[m, s], points[b, s]) for s in seeds]
    return stats


def fmt(values, digits=3):
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def verdict(stats, a, b, n_seeds):
    """Plain words, seed by seed: does a's front dominate b's?"""
    higher = sum(x > y for x, y in zip(stats["hypervolume"][a], stats["hypervolume"][b]))
    wins = sum(x == 0 and y > 0 for x, y in zip(stats["dominated"][a, b], stats["dominated"][b, a]))
    return (f"- **{a} vs {b}**: hypervolume {fmt(stats['hypervolume'][a])} vs {fmt(stats['hypervolume'][b])} "
            f"({a} higher in {higher} of {n_seeds} seeds). Fraction of {a}'s points dominated by {b}'s front: "
            f"{fmt(stats['dominated'][a, b])}; of {b}'s points by {a}'s front: {fmt(stats['dominated'][b, a])}. "
            f"**{a}'s front dominates {b}'s (none of its points dominated, some of {b}'s dominated) in {wins} of "
            f"{n_seeds} seeds{'' if wins == n_seeds else ': not a consistent domination on this world'}.**")


def write_report(rows, stats, methods, names, grid, seeds, front, args):
    """pareto.csv (every row), pareto.md (the summary, the verdict, the clip, every point); returns the Markdown."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pareto.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    spread = "mean ± std over seeds" if len(seeds) > 1 else "one seed"
    regime = (f"{args.steps} steps of {args.micro_batch} x {args.grad_accum} pairs, lr {args.lr:g}, beta "
              f"{args.beta:g}, dual solved per {args.solve_per}")
    lines = [f"# Pareto sweep on the embedded world: {' vs '.join(names)}", "",
             f"{len(methods)} methods x {len(grid)} weights x {len(seeds)} seeds, {regime}; {args.prompts} held-out "
             f"prompts x {args.samples} samples at temperature {args.temperature}; {spread}. Hypervolume: from 0, "
             f"exact ({len(names)}-D); the world's exact front (world.exact_front, mixtures allowed) has "
             f"{stats['exact']:.4f}. Gain: how much of both {names[0]} and {names[1]} a point could still add and "
             "stay achievable, the mean over the sweep's points. Fidelity: Spearman correlation across the sweep "
             "between an objective's weight and its score (1: the scores follow the weights' order).", "",
             "| method | hypervolume | share of exact | gain to the front | "
             + " | ".join(f"fidelity {n}" for n in names) + " | KL, mean over the sweep |", "|---" * (5 + len(names))
             + "|"]
    for m in methods:
        kl = [sum(r["kl"] for r in rows if (r["method"], r["seed"]) == (m, s)) / len(grid) for s in seeds]
        fidelity = ["(ignores weights)" if m == "mgda" else fmt(stats[f"fidelity_{n}"][m]) for n in names]
        lines.append(f"| {m} | {fmt(stats['hypervolume'][m])} | {fmt(stats['share'][m])} | "
                     f"{fmt(stats['gain'][m])} | " + " | ".join(fidelity) + f" | {fmt(kl, 2)} |")
    ref = [r for r in rows if r["method"] == "reference"]
    gain = [front_gain_2d((r[names[0]], r[names[1]]), [v[:2] for v in front]) for r in ref]
    lines += ["", "Reference model: " + ", ".join(f"{n} {fmt([r[n] for r in ref])}" for n in names)
              + f"; gain to the front {fmt(gain)}.", "", "## Does RACO's front dominate?", ""]
    lines += [verdict(stats, "raco", b, len(seeds)) for b in ("lw", "cagrad") if {"raco", b} <= set(methods)]
    clip = [m for m in ("cagrad", "raco") if m in methods]
    if clip:
        lines += ["", "## When the clip matters", "", "Fractions of steps, means over each run's steps, then over "
                  "seeds: how often the dual is interior (not a vertex), how often the clip changes RACO's direction, "
                  "the cosine between RACO's and CAGrad's directions on the same gradients, and between the "
                  "objectives' gradients.", "",
                  "| method | " + " | ".join(f"w = {':'.join(f'{x:g}' for x in w)}" for w in grid) + " |",
                  "|---" * (1 + len(grid)) + "|"]
        for m in clip:
            for key in CLIP_KEYS + (f"cos/{names[0]}-{names[1]}",):
                cells = [[r[key] for r in rows if r["method"] == m and key in r
                          and tuple(r[f"w_{n}"] for n in names) == w] for w in grid]
                if all(cells):
                    lines.append(f"| {m}: {key} | " + " | ".join(fmt(c) for c in cells) + " |")
    keys = list(names) + [n for n in world.OBJECTIVES if n not in names] + ["well_formed", "words", "kl"] \
        + [f"pair_accuracy_{n}" for n in names]
    lines += ["", f"## Every point ({spread})", "", "| method | weights | " + " | ".join(keys) + " |",
              "|---" * (len(keys) + 2) + "|"]
    for m in methods:
        for w in grid:
            sel = [r for r in rows if r["method"] == m and tuple(r[f"w_{n}"] for n in names) == w]
            lines.append(f"| {m} | {':'.join(f'{x:g}' for x in w)} | " + " | ".join(fmt([r[k] for r in sel])
                                                                               for k in keys) + " |")
    with open(os.path.join(args.out, "pareto.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


MARKERS = "osD^vPX*hp"  # one per weight vector of the sweep
LINES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)))  # one per method: lines on top of each other show


def weight_label(w):
    return ":".join(f"{v:.2g}" for v in w)


def plot_fronts(rows, stats, methods, names, grid, front, path):
    """Each method's points in the first two objectives (means over seeds, std bars where there are several seeds),
    its non-dominated points joined as its front, the reference model and the world's exact front; on the right the
    same, zoomed onto the methods' fronts. A method has a colour and a line style; a weight vector has a marker,
    named in the second legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    x, y = names[0], names[1]
    seeds = len({r["seed"] for r in rows if r["method"] != "reference"})
    ref = [r for r in rows if r["method"] == "reference"]
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 5.4), gridspec_kw={"width_ratios": [1, 1]})
    fronts = []
    for ax in axes:
        ax.plot(*zip(*[(v[0], v[1]) for v in front]), "k-", lw=2.5,
                label=f"exact front (hypervolume {stats['exact']:.3f})")
        for k, m in enumerate(methods):
            colour = f"C{k}"
            points = [[r for r in rows if r["method"] == m and tuple(r[f"w_{n}"] for n in names) == w] for w in grid]
            means = [tuple(mean_std([r[key] for r in p])[0] for key in names) for p in points]
            spreads = [tuple(mean_std([r[key] for r in p])[1] for key in (x, y)) for p in points]
            on_front = pareto_front(means)
            fronts += on_front
            for mean, spread, marker in zip(means, spreads, MARKERS):
                ax.errorbar(mean[0], mean[1], xerr=spread[0] if seeds > 1 else None,
                            yerr=spread[1] if seeds > 1 else None, marker=marker, ms=6, color=colour, capsize=2,
                            lw=0.8, alpha=1.0 if mean in on_front else 0.35,
                            mfc=colour if mean in on_front else "none")
            if len(names) == 2:  # three objectives: the 2-D projection of a 3-D front is no line
                ax.plot(*zip(*sorted((p[0], p[1]) for p in on_front)), ls=LINES[k % len(LINES)], color=colour,
                        lw=1.6, alpha=0.85)
            ax.plot([], [], ls=LINES[k % len(LINES)], color=colour, label=f"{m}: hypervolume "
                    f"{fmt(stats['hypervolume'][m])}\n({fmt(stats['share'][m], 2)} of the exact front's)")
        ax.plot(mean_std([r[x] for r in ref])[0], mean_std([r[y] for r in ref])[0], "k*", ms=14,
                label="reference model")
        ax.set(xlabel=f"{x} (exact score of samples)", ylabel=f"{y} (exact score of samples)")
        ax.grid(alpha=0.3)
    axes[0].set(xlim=(0, 1.02), ylim=(0, 0.8))
    xs, ys = [p[0] for p in fronts], [p[1] for p in fronts]
    axes[1].set(xlim=(min(xs) - 0.03, max(xs) + 0.03), ylim=(min(ys) - 0.03, max(ys) + 0.03))
    spread = f"bars: std over {seeds} seeds" if seeds > 1 else "one seed"
    axes[0].set_title(f"Each method's points (filled: on its front), {spread}"
                      + (f"\n(a projection of {len(names)} objectives)" if len(names) > 2 else ""), fontsize=9)
    axes[1].set_title("the same, zoomed onto the methods' fronts", fontsize=9)
    methods_legend = axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="methods",
                                    title_fontsize=8)
    axes[1].add_artist(methods_legend)
    weights_legend = axes[1].legend(handles=[Line2D([], [], ls="", marker=marker, color="grey", label=weight_label(w))
                                             for w, marker in zip(grid, MARKERS)], fontsize=7, loc="lower left",
                                    bbox_to_anchor=(1.02, 0.0), title=f"weights ({':'.join(names)})", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight", bbox_extra_artists=[methods_legend, weights_legend])
    plt.close(fig)


def plot_clip(rows, names, grid, path):
    """RACO's clip diagnostics against the weights, mean over seeds with std bars: how often the dual is interior
    and the clip turns the direction, the objectives' gradient cosine; and the angle the clip turns it by."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ticks = list(range(len(grid)))

    def series(key, transform=float):
        values = [[transform(r[key]) for r in rows if r["method"] == "raco" and key in r
                   and tuple(r[f"w_{n}"] for n in names) == w] for w in grid]
        return zip(*[mean_std(v) for v in values]) if all(values) else None

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (("interior", "dual interior (fraction of steps)", "s--"),
                              ("clip_changed", "clip turns d (fraction of steps)", "o-"),
                              (f"cos/{names[0]}-{names[1]}", f"cos(g_{names[0]}, g_{names[1]})", "^-")):
        found = series(key)
        if found:
            mean, std = found
            left.errorbar(ticks, mean, yerr=std, fmt=style, capsize=3, label=label, alpha=0.8)
    found = series("cos_cagrad", lambda c: math.degrees(math.acos(min(1.0, max(-1.0, c)))))
    if found:
        mean, std = found
        right.errorbar(ticks, mean, yerr=std, fmt="o-", capsize=3, color="tab:red")
    for ax in (left, right):
        ax.set_xticks(ticks, [weight_label(w) for w in grid], fontsize=7, rotation=30 if len(names) > 2 else 0)
        ax.set_xlabel(f"weights ({':'.join(names)})")
        ax.grid(alpha=0.3)
    left.axhline(0, color="grey", lw=0.5)
    left.set(ylim=(-1.05, 1.05))
    left.set_title("RACO's runs: means over each run's steps, then over seeds", fontsize=9)
    left.legend(fontsize=7)
    right.set_ylabel("degrees")
    right.set_title("the angle between RACO's and CAGrad's directions (from the mean cosine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])  # defaults stated in each help (some depend on --quick)
    add_arguments(p, QUICK, FULL)
    p.add_argument("--sweep", help=f"weights: of the first objective, or colon-separated vectors (default: "
                                   f"{FULL['sweep']}; quick {QUICK['sweep']}; three objectives {THREE})")
    p.add_argument("--out", default="out/pareto", help="the sweep's directory (default: %(default)s)")
    return check_arguments(p.parse_args(argv))


def main(argv=None):
    return run_pareto(parse_args(argv))


if __name__ == "__main__":
    run_command(main, interrupted=left_behind)
