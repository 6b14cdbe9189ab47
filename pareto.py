"""The Pareto sweep on the embedded world: every method over a range of weights and seeds, trained, sampled and
scored exactly, and compared as fronts.

    python pareto.py               # 6 methods x 5 weights x 3 seeds on the world (~14 min on a 2-core CPU)
    python pareto.py --quick       # the same in miniature (about a minute)

Each run is a train.py run; each trained policy is evaluated as eval.py evaluates a checkpoint (exact scores of
samples at temperature 0.6, KL to the reference, held-out pair accuracy). Per method it reports the hypervolume of
its front, its weight fidelity (Spearman rank correlation of a weight with its objective's score across the sweep),
and which front dominates which. Runs already trained are reused, so an interrupted sweep continues.
"""
import csv
import dataclasses
import json
import math
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import train
import world
from eval import pair_metrics
from metrics import fraction_dominated, hypervolume_2d, mean_std, spearman
from policy import evaluate_samples, load_model, pick_device
from preference_data import load_pairs
from train import OneLineParser, UsageError, run_command


PARETO_OBJECTIVES = ["quality", "conciseness"]
HV_REFERENCE = (0.0, 0.0)  # the worst possible score of both objectives: every trained point counts
QUICK = dict(methods=",".join(train.TRAIN_METHODS), sweep="0.1,0.5,0.9", seeds="0", steps=20, prompts=32,
             samples=2, pairs=128)
FULL = dict(methods=",".join(train.TRAIN_METHODS), sweep="0.1,0.3,0.5,0.7,0.9", seeds="0,1,2",
            steps=100, prompts=64, samples=4, pairs=256)


def point_metrics(policy, reference, tokenizer, eval_pairs, prompts, args, cfg, device):
    """Every metric of one policy as one flat row: sampled scores with errors, KL, held-out pair accuracy/margin."""
    scores, _ = evaluate_samples(policy, tokenizer, prompts, world.score, num_samples=args.samples,
                                 temperature=args.temperature, seed=cfg.seed, reference=reference,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    row = {k: v for k, v in scores.items() if k != "samples"}
    for name, m in pair_metrics(policy, reference, tokenizer, eval_pairs, PARETO_OBJECTIVES, cfg, device,
                                args.batch_size).items():
        row.update({f"pair_accuracy_{name}": m["accuracy"], f"pair_margin_{name}": m["margin"]})
    return row


def read_json(path):
    with open(path) as f:
        return json.load(f)


def sweep_point(cfg, tokenizer, reference, eval_pairs, prompts, args, device, inputs_time):
    """Train one (method, weights, seed) unless an identical run finished after the model and data were last
    written (a rebuilt world keeps its paths), then evaluate it; the evaluation is cached too, so an interrupted
    sweep continues where it stopped. Returns (row, reused)."""
    summary_path, eval_path = os.path.join(cfg.out, "summary.json"), os.path.join(cfg.out, "eval.json")
    reused = os.path.isfile(summary_path) and os.path.getmtime(summary_path) > inputs_time \
        and read_json(summary_path)["config"] == dataclasses.asdict(cfg)
    if not reused:
        train.main(cfg)
    settings = {k: getattr(args, k) for k in ("prompts", "samples", "temperature", "pairs", "max_new_tokens")}
    if reused and os.path.isfile(eval_path) and read_json(eval_path)["settings"] == settings:
        return read_json(eval_path)["row"], True
    policy = load_model(os.path.join(cfg.out, "policy"), device)[1]
    w = [float(x) for x in cfg.weights.split(",")]
    row = {"method": cfg.method, "w_quality": w[0], "w_conciseness": w[1], "seed": cfg.seed, "steps": cfg.steps,
           **point_metrics(policy, reference, tokenizer, eval_pairs, prompts, args, cfg, device),
           "train_s": read_json(summary_path)["seconds"]}
    with open(eval_path, "w") as f:
        json.dump({"settings": settings, "row": row}, f, indent=2)
    return row, reused


def run_pareto(args):
    started = time.time()
    for key, value in (QUICK if args.quick else FULL).items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in train.TRAIN_METHODS for m in methods):
        raise UsageError(f"--methods: expected some of {', '.join(train.TRAIN_METHODS)}, got {args.methods!r}")
    try:
        sweep, seeds = [float(w) for w in args.sweep.split(",")], [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--sweep, --seeds: expected comma-separated numbers, got {args.sweep!r}, {args.seeds!r}") \
            from None
    if not all(0 < w < 1 for w in sweep) or len(set(sweep)) != len(sweep) or len(sweep) < 2:
        raise UsageError(f"--sweep: expected two or more distinct weights of quality in (0, 1), got {args.sweep!r}")
    eval_data = args.data.replace("world_train.jsonl", "world_eval.jsonl")
    for path, found in ((args.model, os.path.isdir(args.model)), (args.data, os.path.isfile(args.data)),
                        (eval_data, os.path.isfile(eval_data))):
        if not found:
            raise UsageError(f"{path}: not found; the sweep runs on the embedded world (python world.py build)")
    inputs = [args.data, eval_data] + [os.path.join(args.model, f) for f in os.listdir(args.model)]
    device = pick_device(args.device)
    if device.type == "cpu":  # the world's model is tiny: a second thread saves little, and on a busy machine
        torch.set_num_threads(args.threads)  # threads waiting for each other made every step 5-50x slower
    tokenizer, reference = load_model(args.model, device)
    eval_pairs, _ = load_pairs(eval_data, "auto", PARETO_OBJECTIVES, tokenizer, limit=args.pairs)
    prompts = world.eval_prompts(args.prompts)
    base = dict(model=args.model, data=args.data, objectives=",".join(PARETO_OBJECTIVES), steps=args.steps,
                eval_prompts=0, device=args.device, log_every=max(1, args.steps // 4))  # evaluated here, once
    rows = [{"method": "reference", "w_quality": math.nan, "w_conciseness": math.nan, "seed": s, "steps": 0,
             **point_metrics(reference, reference, tokenizer, eval_pairs, prompts, args, train.Config(**base, seed=s),
                            device),
             "train_s": 0.0} for s in seeds]  # the same prompts and sampling seeds as each seed's runs
    runs = [(m, w, s) for s in seeds for m in methods for w in sweep]
    for k, (method, w, seed) in enumerate(runs, 1):
        cfg = train.Config(**base, method=method, weights=f"{w:g},{1 - w:g}", seed=seed,
                           out=os.path.join(args.out, "runs", f"{method}-w{w:g}-s{seed}"))
        run_started = time.time()
        row, reused = sweep_point(cfg, tokenizer, reference, eval_pairs, prompts, args, device,
                                  max(os.path.getmtime(p) for p in inputs))
        rows.append(row)
        print(f"\n[{k}/{len(runs)}] {method} w=({w:g}, {1 - w:g}) seed {seed}: quality {row['quality']:.3f} "
              f"conciseness {row['conciseness']:.3f} kl {row['kl']:.3f} "
              f"({'reused' if reused else f'{time.time() - run_started:.0f} s'})", flush=True)
    stats = analyse(rows, methods, sweep, seeds)
    print(write_report(rows, stats, methods, sweep, seeds, args))
    plot_fronts(rows, stats, methods, sweep, os.path.join(args.out, "pareto.png"))
    print(f"sweep done in {time.time() - started:.0f} s: {args.out}/pareto.csv, pareto.md, pareto.png")
    return rows, stats


def front_points(rows, method, seed, sweep):
    """(quality, conciseness) of one method and seed, in sweep order."""
    by_weight = {r["w_quality"]: (r["quality"], r["conciseness"])
                 for r in rows if (r["method"], r["seed"]) == (method, seed)}
    return [by_weight[w] for w in sweep]


def analyse(rows, methods, sweep, seeds):
    """Per method, lists over seeds: hypervolume (reference point HV_REFERENCE) and weight fidelity of both
    objectives; per pair of methods (a, b), the fraction of a's points dominated by b's front."""
    stats = {"hypervolume": {}, "fidelity_quality": {}, "fidelity_conciseness": {}, "dominated": {}}
    fronts = {(m, s): front_points(rows, m, s, sweep) for m in methods for s in seeds}
    for m in methods:
        stats["hypervolume"][m] = [hypervolume_2d(fronts[m, s], HV_REFERENCE) for s in seeds]
        stats["fidelity_quality"][m] = [spearman(sweep, [q for q, _ in fronts[m, s]]) for s in seeds]
        stats["fidelity_conciseness"][m] = [spearman([1 - w for w in sweep], [c for _, c in fronts[m, s]])
                                            for s in seeds]
        for b in methods:
            stats["dominated"][m, b] = [fraction_dominated(fronts[m, s], fronts[b, s]) for s in seeds]
    return stats


def fmt(values):
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def verdict(stats, a, b, n_seeds):
    """Plain words, seed by seed: does a's front dominate b's?"""
    higher = sum(x > y for x, y in zip(stats["hypervolume"][a], stats["hypervolume"][b]))
    wins = sum(x == 0 and y > 0 for x, y in zip(stats["dominated"][a, b], stats["dominated"][b, a]))
    return (f"- **{a} vs {b}**: hypervolume {fmt(stats['hypervolume'][a])} vs {fmt(stats['hypervolume'][b])} "
            f"({a} higher in {higher} of {n_seeds} seeds). Fraction of {a}'s points dominated by {b}'s front: "
            f"{fmt(stats['dominated'][a, b])}; of {b}'s points by {a}'s front: {fmt(stats['dominated'][b, a])}. "
            f"**{a}'s front dominates {b}'s (none of its points dominated, some of {b}'s dominated) in {wins} of "
            f"{n_seeds} seeds{'' if wins == n_seeds else ': not a consistent domination on this world'}.**")


def write_report(rows, stats, methods, sweep, seeds, args):
    """pareto.csv (every row), pareto.md (the summary, the verdict, every point); returns the Markdown."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pareto.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    spread = "mean ± std over seeds" if len(seeds) > 1 else "one seed"
    lines = ["# Pareto sweep on the embedded world: quality vs conciseness", "",
             f"{len(methods)} methods x {len(sweep)} weights x {len(seeds)} seeds, {args.steps} steps each; "
             f"{args.prompts} held-out prompts x {args.samples} samples at temperature {args.temperature}; {spread}. "
             f"Hypervolume: reference point (quality, conciseness) = {HV_REFERENCE}. Fidelity: Spearman correlation "
             "across the sweep between an objective's weight and its score (1: the scores follow the weights' order; "
             "nan: the scores do not change with the weights).", "",
             "| method | hypervolume | fidelity quality | fidelity conciseness | KL, mean over the sweep |",
             "|---|---|---|---|---|"]
    for m in methods:
        kl = [sum(r["kl"] for r in rows if (r["method"], r["seed"]) == (m, s)) / len(sweep) for s in seeds]
        lines.append(f"| {m} | {fmt(stats['hypervolume'][m])} | {fmt(stats['fidelity_quality'][m])} | "
                     f"{fmt(stats['fidelity_conciseness'][m])} | {fmt(kl)} |")
    ref = [r for r in rows if r["method"] == "reference"]
    lines += ["", f"Reference model: quality {fmt([r['quality'] for r in ref])}, conciseness "
                  f"{fmt([r['conciseness'] for r in ref])}.", "", "## Does RACO's front dominate?", ""]
    lines += [verdict(stats, "raco", b, len(seeds)) for b in ("lw", "cagrad") if {"raco", b} <= set(methods)]
    keys = ["quality", "conciseness", "faithfulness", "well_formed", "words", "kl", "pair_accuracy_quality",
            "pair_accuracy_conciseness"]
    lines += ["", f"## Every point ({spread})", "", "| method | w_quality | " + " | ".join(keys) + " |",
              "|---" * (len(keys) + 2) + "|"]
    for m in methods:
        for w in sweep:
            sel = [r for r in rows if (r["method"], r["w_quality"]) == (m, w)]
            lines.append(f"| {m} | {w:g} | " + " | ".join(fmt([r[k] for r in sel]) for k in keys) + " |")
    with open(os.path.join(args.out, "pareto.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def plot_fronts(rows, stats, methods, sweep, path):
    """Each method's front in objective space: mean over seeds, std bars, points labelled by the weight of quality."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for m in methods:
        points = [[r for r in rows if (r["method"], r["w_quality"]) == (m, w)] for w in sweep]
        q, q_std = zip(*[mean_std([r["quality"] for r in p]) for p in points])
        c, c_std = zip(*[mean_std([r["conciseness"] for r in p]) for p in points])
        line = ax.errorbar(q, c, xerr=q_std, yerr=c_std, marker="o", ms=4, capsize=2, lw=1.2,
                           label=f"{m} (hypervolume {fmt(stats['hypervolume'][m])})")
        for w, x, y in zip(sweep, q, c):
            ax.annotate(f"{w:g}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6,
                        color=line[0].get_color())
    ref = [r for r in rows if r["method"] == "reference"]
    ax.plot(mean_std([r["quality"] for r in ref])[0], mean_std([r["conciseness"] for r in ref])[0], "k*", ms=14,
            label="reference model")
    ax.set(xlabel="quality (exact score of samples)", ylabel="conciseness (exact score of samples)")
    ax.set_title(f"Fronts over the weight sweep: labels = weight of quality; bars = std over seeds; hypervolume "
                 f"from {HV_REFERENCE}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])  # defaults stated in each help (some depend on --quick)
    p.add_argument("--quick", action="store_true", help="the sweep in miniature")
    p.add_argument("--methods", help=f"methods (default: {FULL['methods']})")
    p.add_argument("--sweep", help=f"weights of quality (default: {FULL['sweep']}; quick {QUICK['sweep']})")
    p.add_argument("--seeds", help=f"training seeds (default: {FULL['seeds']}; quick {QUICK['seeds']})")
    p.add_argument("--steps", type=int, help=f"steps per run (default: {FULL['steps']}; quick {QUICK['steps']})")
    p.add_argument("--model", default=train.Config.model, help="the reference model (default: %(default)s)")
    p.add_argument("--data", default=train.Config.data, help="training pairs (default: %(default)s; the held-out "
                                                             "pairs are world_eval.jsonl beside it)")
    p.add_argument("--pairs", type=int, help=f"held-out pairs at most (default: {FULL['pairs']}; quick "
                                             f"{QUICK['pairs']})")
    p.add_argument("--prompts", type=int, help=f"held-out prompts to sample (default: {FULL['prompts']}; quick "
                                               f"{QUICK['prompts']})")
    p.add_argument("--samples", type=int, help=f"samples per prompt (default: {FULL['samples']}; quick "
                                               f"{QUICK['samples']})")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: %(default)s, "
                                                                   "the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per sample at most (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs or prompts per forward or generate call "
                                                              "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--out", default="out/pareto", help="the sweep's directory (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("pairs", "prompts", "samples", "steps", "batch_size", "max_new_tokens", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if not 0 < args.temperature < math.inf:
        raise UsageError(f"--temperature: expected a positive finite number, got {args.temperature}")
    return args


def main(argv=None):
    return run_pareto(parse_args(argv))


if __name__ == "__main__":
    run_command(main)
