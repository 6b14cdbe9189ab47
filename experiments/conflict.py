"""When does conflict aversion matter? DPO-LW, CAGrad and RACO on the embedded world at chosen conflict levels.

    python experiments/conflict.py          # 4 levels x 3 weights x 5 seeds x 2 learning rates, and c, and m = 3
    python experiments/conflict.py --quick  # 4 levels, one weighting, 2 seeds, 2 learning rates (< 10 min, 2 CPUs)

The world's training pairs are built at each conflict level (world.conflict_pairs, experiments/world_build.py): the
share of pairs whose exact quality and conciseness conflict (the response with more facts uses more words), the rest
pairs that agree or expose waste (the same quality in more words). Every method trains on the same pairs, seeds and
learning rates, and every run is scored at checkpoints along the way (as experiments/frontier.py does: exact scores of
samples, KL from temperature-1 samples), so methods are compared at matched KL: f_a(k) - f_b(k), the best weighted
score at KL <= k, averaged over the KL grid points that every seed of both methods reached and over the weightings,
one number per seed; mean and standard error over seeds. Per level it reports what the runs measured (the cosine
between the objectives' gradients, how often the dual is interior and the clip turns RACO's step, by how many
degrees), the three differences RACO - LW, RACO - CAGrad and CAGrad - LW, and each method's hypervolume share of
the exact front at a KL every run reached. Then c in --cs at the sharpest level, and three objectives at one level.
Runs already trained are reused: an interrupted command continues, and commands with disjoint --seeds can run side by
side into the same --out (then once more with every seed, which trains nothing, for the report).
"""
import json
import math
import os
import sys
import time

if __package__ in (None, ""):  # run as a script, python experiments/conflict.py: the project's modules are one up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import frontier, sweeps
from experiments.world_build import conflict_data, parse_levels
from harness.command_line import OneLineParser, run_command
from harness.errors import UsageError
from harness.metrics import hypervolume_2d, hypervolume_3d, mean_se
from harness.run_directory import write_json

METHODS = ("lw", "cagrad", "raco")
COMPARISONS = (("raco", "lw"), ("raco", "cagrad"), ("cagrad", "lw"))
QUICK = dict(methods=",".join(METHODS), levels="0,0.33,0.67,1", sweep="0.8", seeds="0,1", lrs="2.5e-4,1e-3",
             steps=30, points=2, prompts=24, samples=2, pairs=32, pool_prompts=600, cs="", three="")
FULL = dict(methods=",".join(METHODS), levels="0,0.33,0.67,1", sweep="0.2,0.5,0.8", seeds="0,1,2,3,4",
            lrs="1e-4,2.5e-4", steps=100, points=4, prompts=64, samples=4, pairs=128, pool_prompts=3000,
            cs="0.2,0.7", three="0.67")
THREE = "0.6:0.2:0.2,0.2:0.6:0.2,0.2:0.2:0.6"


def train_and_score(args, level, data, names, sweep, methods, c=0.4, tag=""):
    """Every method x weighting x learning rate x seed at one level (frontier.run_points: trained, or reused, and
    scored at --points checkpoints). Returns (rows, shared): the scored checkpoints with the reference at KL 0, and
    what sweeps.prepare loaded (the exact front among it)."""
    from tqdm import tqdm
    args.data, args.objectives, args.sweep = os.path.join(data, "world_train.jsonl"), ",".join(names), sweep
    args.methods = ",".join(methods)
    shared = sweeps.prepare(args, QUICK, FULL, minimum=1)
    rows = frontier.reference_rows(shared, args)
    runs = [(m, w, lr, seed) for seed in shared["seeds"] for m in shared["methods"] for w in shared["grid"]
            for lr in args.lr_list]
    label = f"level {level:g}{f', c {c:g}' if c != 0.4 else ''}{', m = 3' if len(names) == 3 else ''}"
    for method, w, lr, seed in tqdm(runs, desc=label, unit="run", dynamic_ncols=True):
        cfg = frontier.point_config(args, names, method, w, lr, seed,
                                    os.path.join(args.out, "runs", f"level-{level:g}{tag}"), c=c)
        with sweeps.quietly():
            points, _ = frontier.run_points(cfg, shared, args, names)
        diagnostics = sweeps.run_diagnostics(cfg.out, names)
        rows += [{**point, "c": c, **diagnostics} for point in points]
    return rows, shared


def per_seed(values_by_seed, seeds):
    """{"mean", "se"} over seeds (se: NaN, written null, with one seed)."""
    mean, se = mean_se([values_by_seed[s] for s in seeds])
    return {"mean": mean, "se": se}


def matched_kl(rows, a, b, grid, seeds, names):
    """f_a(k) - f_b(k) per seed, averaged over the KL grid points every seed of both methods reached (frontier.compare)
    and over the weightings: {seed: difference}."""
    totals = {s: [] for s in seeds}
    for w in grid:
        fronts = {(m, s): frontier.frontier(rows, m, w, s, names) for m in (a, b) for s in seeds}
        reach = min(f[1] for f in fronts.values())
        ks = [k for k in frontier.KL_GRID if k <= reach]
        for s in seeds:
            if ks:
                totals[s].append(sum(frontier.weighted(fronts[a, s][0](k), w, names)
                                     - frontier.weighted(fronts[b, s][0](k), w, names) for k in ks) / len(ks))
    return {s: sum(v) / len(v) if v else math.nan for s, v in totals.items()}


def hypervolume_shares(rows, methods, grid, seeds, names, exact):
    """Each method's front at a common KL budget (the largest grid KL every run reached): per seed, the points that
    are best at each weighting with KL at most the budget, their hypervolume from 0 as a share of the exact front's.
    Returns (budget, {method: {seed: share}})."""
    fronts = {(m, w, s): frontier.frontier(rows, m, w, s, names) for m in methods for w in grid for s in seeds}
    reach = min(f[1] for f in fronts.values())
    budget = max([k for k in frontier.KL_GRID if k <= reach], default=reach)
    volume = hypervolume_2d if len(names) == 2 else hypervolume_3d
    shares = {m: {s: volume([tuple(fronts[m, w, s][0](budget)[n] for n in names) for w in grid], (0.0,) * len(names))
                  / exact for s in seeds} for m in methods}
    return budget, shares


def summarise(rows, shared, names):
    """One level's (or one c's) entry of conflict.json."""
    methods, grid, seeds = shared["methods"], shared["grid"], shared["seeds"]
    trained = [r for r in rows if r["method"] != "reference"]
    runs = {(r["method"], r["lr"], r["seed"], tuple(r[f"w_{n}"] for n in names)): r for r in trained}.values()
    by = lambda key, ms=methods: [r[key] for r in runs if r["method"] in ms and key in r]  # noqa: E731
    cos_key = f"cos/{names[0]}-{names[1]}"
    entry = {"cosine": mean_se(by(cos_key))[0], "cosine_se": mean_se(by(cos_key))[1],
             "interior": mean_se(by("interior", ("raco",)))[0] if by("interior", ("raco",)) else math.nan,
             "clip_changed": mean_se(by("clip_changed", ("raco",)))[0] if by("clip_changed", ("raco",)) else math.nan,
             "clip_degrees": math.degrees(math.acos(min(1.0, mean_se(by("cos_cagrad", ("raco",)))[0])))
             if by("cos_cagrad", ("raco",)) else math.nan}
    for a, b in COMPARISONS:
        if {a, b} <= set(methods):
            entry[f"{a}_minus_{b}"] = per_seed(matched_kl(rows, a, b, grid, seeds, names), seeds)
    exact = sweeps.exact_hypervolume(shared["front"], names)
    budget, shares = hypervolume_shares(rows, methods, grid, seeds, names, exact)
    entry["kl_budget"] = budget
    entry["hypervolume_share"] = {m: per_seed(shares[m], seeds) for m in methods}
    for a, b in COMPARISONS:
        if {a, b} <= set(methods):
            entry[f"share_{a}_minus_{b}"] = per_seed({s: shares[a][s] - shares[b][s] for s in seeds}, seeds)
    return entry


def data_statistics(directory, names):
    """The realised mix of a level's pairs: the share of conflict pairs, and of opposite labels where both of the
    first two objectives' labels are decided."""
    with open(os.path.join(directory, "world_train.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    decided = [r for r in rows if r[f"raco_s_{names[0]}"] and r[f"raco_s_{names[1]}"]]
    opposite = sum(r[f"raco_s_{names[0]}"] != r[f"raco_s_{names[1]}"] for r in decided)
    return {"pairs": len(rows), "conflict_share": sum(r["kind"] == "conflict" for r in rows) / len(rows),
            "opposite_labels": opposite / len(decided) if decided else math.nan}


def run_conflict(args):
    started = time.time()
    with sweeps.quietly():
        directories = conflict_data(args.model, os.path.join(args.out, "data"), args.level_list, args.pool_prompts,
                                    held_out=os.path.join(os.path.dirname(args.data), "world_eval.jsonl"))
    names, report, level_rows = ["quality", "conciseness"], {"settings": settings(args), "levels": []}, {}
    for level in args.level_list:
        rows, shared = train_and_score(args, level, directories[level], names, args.two_sweep, args.method_list)
        report["levels"].append({"level": level, **data_statistics(directories[level], names),
                                 **summarise(rows, shared, names)})
        level_rows[level] = rows
    sharpest, report["c"] = args.level_list[-1], []
    for c in args.c_list:  # LW's step does not depend on c: its runs at the sharpest level serve every c
        averse = [m for m in args.method_list if m != "lw"]
        rows, shared = train_and_score(args, sharpest, directories[sharpest], names, args.two_sweep, averse, c,
                                       f"-c{c:g}")
        rows += [r for r in level_rows[sharpest] if r["method"] == "lw"]
        report["c"].append({"c": c, "level": sharpest, **summarise(rows, {**shared, "methods": args.method_list},
                                                                     names)})
    if args.three_level is not None:
        names3 = ["quality", "conciseness", "faithfulness"]
        rows, shared = train_and_score(args, args.three_level, directories[args.three_level], names3, THREE,
                                       args.method_list, tag="-m3")
        report["three_objectives"] = {"level": args.three_level, **summarise(rows, shared, names3)}
    report["seconds"] = round(time.time() - started)
    write_json(os.path.join(args.out, "conflict.json"), report)
    markdown = write_markdown(report)
    with open(os.path.join(args.out, "conflict.md"), "w") as f:
        f.write(markdown)
    plot(report, os.path.join(args.out, "conflict.png"))
    print(markdown)
    print(f"conflict done in {report['seconds']} s: {args.out}/conflict.json, conflict.md, conflict.png")
    return report


def settings(args):
    keys = ("levels", "sweep", "seeds", "lrs", "methods", "steps", "points", "prompts", "samples", "pairs",
            "pool_prompts", "cs", "three", "beta", "micro_batch", "grad_accum", "solve_per", "backward", "temperature")
    return {k: getattr(args, k) for k in keys}


def cell(entry, key, digits=4):
    """mean ± standard error; "-" where there is none (no KL that every run reached)."""
    value = entry.get(key)
    if value is None or value["mean"] is None or math.isnan(value["mean"]):
        return "-"
    if value["se"] is None or math.isnan(value["se"]):
        return f"{value['mean']:+.{digits}f} (one seed)"
    return f"{value['mean']:+.{digits}f} ± {value['se']:.{digits}f}"


def differences(entry):
    """The three matched-KL differences, as table cells."""
    return " | ".join(cell(entry, f"{a}_minus_{b}") for a, b in COMPARISONS)


def write_markdown(report):
    """conflict.md: the settings, then per level what the runs measured and the three differences."""
    s = report["settings"]
    lines = ["# When does conflict aversion matter? LW, CAGrad and RACO against the conflict level", "",
             f"Levels {s['levels']}; weights (quality) {s['sweep']}; seeds {s['seeds']}; learning rates {s['lrs']}; "
             f"{s['steps']} steps of {s['micro_batch']} x {s['grad_accum']} pairs, beta {s['beta']}, c 0.4; scored at "
             f"{s['points']} checkpoints per run on {s['prompts']} held-out prompts x {s['samples']} samples. "
             "Differences are at matched KL (the best weighted score at KL <= k, averaged over the KL grid points "
             "every seed of both methods reached and over the weightings), mean ± standard error over seeds; shares "
             "are of the exact front's hypervolume, at the KL budget every run reached.", "",
             "| level | conflict pairs | opposite labels | cos(g_q, g_c) | dual interior | clip turns d | by (deg) "
             "| RACO - LW | RACO - CAGrad | CAGrad - LW | KL budget | share: LW | CAGrad | RACO |",
             "|---" * 14 + "|"]
    for e in report["levels"]:
        shares = e["hypervolume_share"]
        lines.append(f"| {e['level']:g} | {e['conflict_share']:.2f} | {e['opposite_labels']:.2f} | "
                     f"{e['cosine']:+.3f} | {e['interior']:.2f} | {e['clip_changed']:.2f} | {e['clip_degrees']:.1f} | "
                     f"{differences(e)} | "
                     f"{e['kl_budget']:.3g} | " + " | ".join(cell(shares, m, 3).lstrip("+") for m in METHODS) + " |")
    if report["c"]:  # the levels' own runs are c = 0.4's
        sharpest = {**report["levels"][-1], "c": 0.4}
        lines += ["", f"## c at the sharpest level ({sharpest['level']:g})", "",
                  "| c | dual interior | clip turns d | by (deg) | RACO - LW | RACO - CAGrad | CAGrad - LW |",
                  "|---" * 7 + "|"]
        lines += [f"| {e['c']:g} | {e['interior']:.2f} | {e['clip_changed']:.2f} | {e['clip_degrees']:.1f} | "
                  f"{differences(e)} |"
                  for e in sorted(report["c"] + [sharpest], key=lambda e: e["c"])]
    if "three_objectives" in report:
        e = report["three_objectives"]
        lines += ["", f"## Three objectives at level {e['level']:g} (weights {THREE})", "",
                  "| cos(g_q, g_c) | dual interior | clip turns d | by (deg) | RACO - LW | RACO - CAGrad "
                  "| CAGrad - LW |",
                  "|---" * 7 + "|",
                  f"| {e['cosine']:+.3f} | {e['interior']:.2f} | {e['clip_changed']:.2f} | {e['clip_degrees']:.1f} | "
                  f"{differences(e)} |"]
    return "\n".join(lines) + "\n"


def plot(report, path):
    """The differences at matched KL against the measured gradient cosine, one point per level with standard-error
    bars; beside it, how often RACO's dual is interior and its clip turns the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    levels = report["levels"]
    x = [e["cosine"] for e in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    spread = (max(x) - min(x)) or 1.0
    for k, ((a, b), colour) in enumerate(zip(COMPARISONS, ("tab:red", "tab:purple", "tab:orange"))):
        key = f"{a}_minus_{b}"
        if key in levels[0]:
            left.errorbar([v + (k - 1) * 0.012 * spread for v in x], [e[key]["mean"] for e in levels],
                          yerr=[2 * e[key]["se"] for e in levels], fmt="o-", capsize=3, color=colour,
                          label=f"{a.upper() if a != 'cagrad' else 'CAGrad'} - "
                                f"{b.upper() if b != 'cagrad' else 'CAGrad'}")
    for e, v in zip(levels, x):
        left.annotate(f"level {e['level']:g}", (v, 0), textcoords="offset points", xytext=(0, -14), ha="center",
                      fontsize=7, color="grey")
    left.axhline(0, color="black", lw=0.8)
    left.set(xlabel="cosine between the objectives' gradients, measured in training",
             ylabel="weighted score difference at matched KL")
    left.set_title("Above 0: the first method wins. Bars: 2 standard errors over seeds", fontsize=9)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for key, label, style in (("interior", "RACO's dual is interior", "s--"),
                              ("clip_changed", "the clip turns RACO's step", "o-")):
        right.plot(x, [e[key] for e in levels], style, label=label)
    right.set(xlabel="cosine between the objectives' gradients", ylabel="fraction of steps", ylim=(-0.03, 1.03))
    right.set_title("When the clip can matter at all", fontsize=9)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    sweeps.add_arguments(p, QUICK, FULL)
    sweeps.add_checkpoint_arguments(p, QUICK, FULL)
    p.add_argument("--levels", help=f"conflict levels (default: {FULL['levels']})")
    p.add_argument("--sweep", help=f"weights of quality (default: {FULL['sweep']}; quick {QUICK['sweep']})")
    p.add_argument("--pool-prompts", type=int, help=f"training prompts, 8 candidate responses each (default: "
                                                    f"{FULL['pool_prompts']}; quick {QUICK['pool_prompts']})")
    p.add_argument("--cs", help=f"values of c for CAGrad and RACO at the sharpest level, beside 0.4 (default: "
                                f"{FULL['cs']}; quick: none)")
    p.add_argument("--three", help=f"the level of the three-objective runs ('' for none; default: {FULL['three']}; "
                                   "quick: none)")
    p.add_argument("--out", default="out/conflict", help="the experiment's directory (default: %(default)s)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        setattr(args, key, value if getattr(args, key, None) is None else getattr(args, key))
    args = sweeps.check_arguments(args)
    args.level_list, args.two_sweep = parse_levels(args.levels), args.sweep
    args.method_list = [m for m in args.methods.split(",") if m]
    if not args.method_list or not set(args.method_list) <= set(METHODS):
        raise UsageError(f"--methods: expected some of {', '.join(METHODS)}, got {args.methods!r}")
    args.lr_list = sweeps.learning_rates(args)
    try:
        args.c_list = [float(x) for x in args.cs.split(",") if x]
        args.three_level = float(args.three) if args.three else None
    except ValueError:
        raise UsageError(f"--cs, --three: expected numbers, got {args.cs!r}, {args.three!r}") from None
    if not all(0 <= c < 1 for c in args.c_list) or not 1 <= args.pool_prompts:
        raise UsageError(f"--cs, --pool-prompts: expected values of c in [0, 1) and a positive number of prompts, got "
                         f"{args.cs!r}, {args.pool_prompts}")
    if args.c_list and not {"cagrad", "raco"} & set(args.method_list):
        raise UsageError(f"--cs: the runs at other values of c need cagrad or raco in --methods, got {args.methods!r}")
    if args.three_level is not None and args.three_level not in args.level_list:
        raise UsageError(f"--three: expected one of --levels {args.levels}, got {args.three!r}")
    return args


def main(argv=None):
    return run_conflict(parse_args(argv))


if __name__ == "__main__":
    run_command(main, interrupted=sweeps.left_behind)
