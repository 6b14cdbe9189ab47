"""What every sweep on the embedded world shares (experiments/pareto.py, frontier.py, conflict.py): their common
flags, the inputs every run of a sweep shares (`prepare`), one run's config, training (continued where an interrupt
left it, reused when finished) and evaluation, and its logged diagnostics.

A sweep's `shared` dict (from `prepare`) holds the methods, objective names, weight grid, seeds, device, tokenizer,
the reference model, the held-out pairs and prompts, the world's exact front over them, and the time its inputs
were last written; every run of the sweep reads them from there.
"""
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
from contextlib import contextmanager

import train
import world
from eval import pair_metrics
from harness.checks import TRAIN_METHODS, check_config
from harness.command_line import THREADS_HELP, check_flags, check_positive, check_sampling, use_threads
from harness.errors import UsageError
from harness.metrics import front_hypervolume_2d
from harness.models import load_model, pick_device
from harness.preference_data import load_pairs
from harness.run_directory import check_writable, input_fingerprints, resumable, same_settings
from harness.sampling import Sampling, evaluate_samples

CLIP_KEYS = ("interior", "clip_changed", "cos_cagrad")  # RACO's (and CAGrad's interior) per-step diagnostics


def read_json(path):
    with open(path) as f:
        return json.load(f)


def evaluate_policy(policy, shared, args, cfg):
    """Every metric of one policy as one flat row: sampled scores with errors, KL to the sweep's reference, held-out
    pair accuracy and margin. cfg: the train.Config the policy was trained with (its seed picks the samples)."""
    how = Sampling(args.samples, args.temperature, args.max_new_tokens, cfg.seed, args.batch_size)
    scores, _ = evaluate_samples(policy, shared["tokenizer"], shared["prompts"], how, world.score,
                                 reference=shared["reference"])
    row = {k: v for k, v in scores.items() if k != "samples"}
    for name, m in pair_metrics(policy, shared["reference"], shared["tokenizer"], shared["eval_pairs"],
                                shared["names"], cfg, shared["device"], args.batch_size).items():
        row.update({f"pair_accuracy_{name}": m["accuracy"], f"pair_margin_{name}": m["margin"]})
    return row


def run_diagnostics(out, names):
    """The mean over a run's logged steps of its clip diagnostics and its objectives' gradient cosines."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    keys = list(CLIP_KEYS) + [f"cos/{a}-{b}" for i, a in enumerate(names) for b in names[i + 1:]]
    return {k: sum(line[k] for line in lines if k in line) / sum(k in line for line in lines)
            for k in keys if any(k in line for line in lines)}


def finished(cfg, inputs_time):
    """Whether cfg's run finished, with this very config, after the model and data were last written (a rebuilt
    world keeps its paths)."""
    summary = os.path.join(cfg.out, "summary.json")
    return os.path.isfile(summary) and os.path.getmtime(summary) > inputs_time \
        and same_settings(read_json(summary)["config"], dataclasses.asdict(cfg))


def train_run(cfg):
    """train.main on one run of a sweep: continued where an interrupt left it (the same config, the same inputs, a
    checkpoint and no summary), else trained afresh over whatever its directory held (--overwrite)."""
    config = dataclasses.asdict(cfg)
    train.main(dataclasses.replace(cfg, overwrite=not resumable(config, input_fingerprints(cfg.data, cfg.model))))


def eval_settings(args):
    """The settings a cached evaluation of a run must match to be reused."""
    return {k: getattr(args, k) for k in ("prompts", "samples", "temperature", "pairs", "max_new_tokens")}


def weight_grid(text, names, minimum=2):
    """--sweep: weights of the first objective (two objectives) or colon-separated weight vectors, each summing
    to 1: a list of at least `minimum` tuples."""
    try:
        grid = [tuple(float(x) for x in item.split(":")) for item in text.split(",")]
    except ValueError:
        raise UsageError(f"--sweep: expected comma-separated weights, got {text!r}") from None
    # the values as the runs' --weights spell them (1 - 0.3 is not the float 0.7), so rows match their grid point
    grid = [tuple(float(f"{x:g}") for x in ((w[0], 1 - w[0]) if len(w) == 1 and len(names) == 2 else w))
            for w in grid]
    if len(set(grid)) != len(grid) or len(grid) < minimum or not all(
            len(w) == len(names) and all(0 < x < 1 for x in w) and abs(sum(w) - 1) < 1e-3 for w in grid):
        raise UsageError(f"--sweep: expected at least {minimum} distinct weight vectors for {len(names)} objectives, "
                         f"each in (0, 1) and summing to 1, got {text!r}")
    return grid


def train_config(args, names, **fields):
    """The train.Config of one run of the sweep; the training flags of pareto.py pass through, `fields` override."""
    return train.Config(**{**dict(model=args.model, data=args.data, objectives=",".join(names), steps=args.steps,
                                  lr=args.lr, beta=args.beta, batch_size=args.micro_batch, grad_accum=args.grad_accum,
                                  solve_per=args.solve_per, backward=args.backward, eval_prompts=0, device=args.device,
                                  save_every=0, log_every=max(1, args.steps // 4)), **fields})


def prepare(args, quick, full, minimum=2, three=None):
    """Check the sweep's flags and inputs (the defaults from the command's presets `quick` or `full`; `three`: the
    weights to sweep with three objectives when --sweep is left at a preset), load the reference model and the
    held-out data: the `shared` dict of what every run reads."""
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in TRAIN_METHODS for m in methods):
        raise UsageError(f"--methods: expected some of {', '.join(TRAIN_METHODS)}, got {args.methods!r}")
    names = args.objectives.split(",")
    if len(set(names)) != len(names) or not set(names) <= set(world.OBJECTIVES) or len(names) not in (2, 3):
        raise UsageError(f"--objectives: expected two or three of {', '.join(world.OBJECTIVES)}, got "
                         f"{args.objectives!r}")
    if three is not None and len(names) == 3 and args.sweep in (quick["sweep"], full["sweep"]):
        args.sweep = three
    grid = weight_grid(args.sweep, names, minimum)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    check_sampling(args.temperature, seeds, "--seeds")
    eval_data = world.held_out_path(args.data)
    if eval_data is None:
        raise UsageError(f"--data: expected the embedded world's world_train.jsonl, got {args.data!r}")
    for path, found in ((args.model, os.path.isdir(args.model)), (args.data, os.path.isfile(args.data)),
                        (eval_data, os.path.isfile(eval_data))):
        if not found:
            raise UsageError(f"{path}: not found; the sweep runs on the embedded world "
                             "(python experiments/world_build.py build)")
    check_config(train_config(args, names, out=args.out))
    inputs = [args.data, eval_data] + [os.path.join(args.model, f) for f in os.listdir(args.model)]
    device = pick_device(args.device)
    use_threads(args.threads, device)
    tokenizer, reference = load_model(args.model, device)
    eval_pairs, _ = load_pairs(eval_data, "auto", names, tokenizer, limit=args.pairs)
    prompts = world.eval_prompts(args.prompts)
    return dict(methods=methods, names=names, grid=grid, seeds=seeds, device=device, tokenizer=tokenizer,
                reference=reference, eval_pairs=eval_pairs, prompts=prompts,
                inputs_time=max(os.path.getmtime(p) for p in inputs), front=world.exact_front(names, prompts))


@contextmanager
def quietly():
    """What each run of a sweep prints -- progress bars, warnings, where it wrote its files -- is kept from the
    terminal, where the sweep's one progress bar and, at the end, its table stand; a run that fails shows its lines."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        lines = [line for line in buffer.getvalue().split("\n") if line.strip() and "\r" not in line]
        sys.stderr.write("".join(line + "\n" for line in lines[-20:]))
        raise


def exact_hypervolume(front, names):
    """The hypervolume of the exact front from 0: the area under its two varying objectives' polyline, times the
    value of a third objective that is constant along it (faithfulness: 1)."""
    varying = [i for i in range(len(names)) if len({v[i] for v in front}) > 1] or [0, 1]
    constant = [front[0][i] for i in range(len(names)) if i not in varying]
    return front_hypervolume_2d([(v[varying[0]], v[varying[1]]) for v in front], (0.0, 0.0)) * math.prod(constant)


def add_arguments(p, quick, full):
    """The flags the sweep and the frontier command share; `quick` and `full`: the command's own presets."""
    p.add_argument("--quick", action="store_true", help="in miniature")
    p.add_argument("--methods", help=f"methods (default: {full['methods']})")
    p.add_argument("--objectives", default="quality,conciseness", help="two or three of the world's objectives "
                                                                       "(default: %(default)s)")
    p.add_argument("--seeds", help=f"training seeds (default: {full['seeds']}; quick {quick['seeds']})")
    p.add_argument("--steps", type=int, help=f"steps per run (default: {full['steps']}; quick {quick['steps']})")
    p.add_argument("--lr", type=float, default=train.Config.lr, help="learning rate (default: %(default)s)")
    p.add_argument("--beta", type=float, default=train.Config.beta, help="DPO temperature (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=train.Config.batch_size, help="pairs per micro-batch "
                                                                                    "(default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default: %(default)s)")
    p.add_argument("--solve-per", default="step", help="step | micro_batch (default: %(default)s)")
    p.add_argument("--backward", default="per_objective", help="per_objective | shared: train.py's --backward "
                                                               "(default: %(default)s)")
    p.add_argument("--model", default=train.Config.model, help="the reference model (default: %(default)s)")
    p.add_argument("--data", default=train.Config.data, help="training pairs (default: %(default)s; the held-out "
                                                             "pairs are world_eval.jsonl beside it)")
    p.add_argument("--pairs", type=int, help=f"held-out pairs at most (default: {full['pairs']}; quick "
                                             f"{quick['pairs']})")
    p.add_argument("--prompts", type=int, help=f"held-out prompts to sample (default: {full['prompts']}; quick "
                                               f"{quick['prompts']})")
    p.add_argument("--samples", type=int, help=f"samples per prompt (default: {full['samples']}; quick "
                                               f"{quick['samples']})")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: %(default)s, "
                                                                   "the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per sample at most (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs or prompts per evaluation forward or generate "
                                                              "call (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP + " (default: %(default)s)")


def add_checkpoint_arguments(p, quick, full):
    """--lrs and --points, for the sweeps that score each run at checkpoints along the way (frontier.py, conflict.py)."""
    p.add_argument("--lrs", help=f"learning rates (default: {full['lrs']}; quick {quick['lrs']})")
    p.add_argument("--points", type=int, help=f"checkpoints scored per run (default: {full['points']}; quick "
                                              f"{quick['points']})")


def learning_rates(args):
    """--lrs as a list of floats, and --points checked against --steps; one line naming them where either is wrong."""
    try:
        lrs = [float(x) for x in args.lrs.split(",")]
    except ValueError:
        raise UsageError(f"--lrs: expected comma-separated learning rates, got {args.lrs!r}") from None
    if not lrs or not all(0 < lr < math.inf for lr in lrs) or not 1 <= args.points <= args.steps:
        raise UsageError(f"--lrs, --points: expected positive learning rates and 1 <= points <= steps, got "
                         f"{args.lrs!r}, {args.points}")
    return lrs


def check_arguments(args):
    """The common flags' checks, and --out writable, before anything loads."""
    check_positive(args, ("pairs", "prompts", "samples", "steps", "batch_size", "max_new_tokens"))
    check_flags(args, [("threads", args.threads >= 0)])
    check_sampling(args.temperature, [])
    check_writable(args.out)
    return args


def left_behind():
    """What an interrupted sweep leaves (frontier.py's too)."""
    return "finished runs are kept and reused when the same command runs again"
