"""Where a run's logged metrics go besides metrics.jsonl, and the picture of its curves.

--report-to tensorboard   torch.utils.tensorboard in --out/tensorboard (`tensorboard --logdir out/train/tensorboard`)
--report-to wandb         Weights & Biases (offline with WANDB_MODE=offline, then `wandb sync`)
Both log the same keys as metrics.jsonl, at the same steps, and are optional installs, imported only when asked for.
Whatever the backend, a run ends by drawing --out/curves.png from metrics.jsonl (`curves`): what a teacher shows.
"""
import hashlib
import importlib.util
import json
import math
import os

from harness.errors import UsageError
BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --report-to name: the package it needs


def parse_report_to(text):
    """--report-to as a list of backends ("none" or "": none), each checked to be installed, before any work."""
    names = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
    for name in names:
        if name not in BACKENDS:
            raise UsageError(f"--report-to: unknown backend {name!r}; expected none or some of "
                             f"{', '.join(BACKENDS)}")
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise UsageError(f"--report-to {name} needs the {BACKENDS[name]} package: pip install {BACKENDS[name]}")
    return names


class Reporters:
    """The backends of --report-to, on the main process: log(step, metrics) to each, close() at the end."""

    def __init__(self, names, out, config):
        self.writers = []
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter
            self.writers.append(SummaryWriter(log_dir=os.path.join(out, "tensorboard")))
        if "wandb" in names:
            import wandb
            run_id = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:16]  # a resumed run continues it
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "raco"), name=os.path.basename(out),
                                    id=run_id, resume="allow", dir=out, config=config)
            self.writers.append(self.wandb)

    def log(self, step, metrics):
        finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for writer in self.writers:
            if hasattr(writer, "add_scalar"):
                for key, value in finite.items():
                    writer.add_scalar(key, value, step)
                writer.flush()
            else:
                writer.log(finite, step=step)

    def close(self):
        for writer in self.writers:
            (writer.close if hasattr(writer, "close") else writer.finish)()
        self.writers = []


def curve_series(lines, names):
    """The panels of curves.png from metrics.jsonl's lines: {panel title: {label: (steps, values)}}."""
    def series(key):
        points = [(line["step"], line[key]) for line in lines if line.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]

    pairs = [f"{a}-{b}" for i, a in enumerate(names) for b in names[i + 1:]]
    panels = {"DPO loss per objective": {n: series(f"{n}/loss") for n in names} | {"weighted": series("loss/weighted")},
              "reward accuracy (implicit reward of the chosen > rejected)": {
                  n: series(f"{n}/rewards/accuracies") for n in names},
              "coefficients a of d = sum_i a_i g_i": {f"a/{n}": series(f"a/{n}") for n in names},
              "the dual p and the clipped p~ = min(p, w)": {
                  **{f"p/{n}": series(f"p/{n}") for n in names},
                  **{f"p~/{n}": series(f"p_clipped/{n}") for n in names}},
              "cosine between the objectives' gradients": {p: series(f"cos/{p}") for p in pairs}}
    return {title: {label: s for label, s in panel.items() if s[0]} for title, panel in panels.items()}


def curves(out, names, scores=None):
    """--out/curves.png: the curves of metrics.jsonl and, where the run evaluated, the scores before and after."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    panels = curve_series(lines, names)
    if scores and scores.get("reference") and scores.get("policy"):
        panels["held-out scores: the reference and the trained policy"] = None
    panels = {title: panel for title, panel in panels.items() if panel is None or panel}
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for ax, (title, panel) in zip(axes.flat, panels.items()):
        if panel is None:  # before and after, side by side, per score
            keys = [k for k in [*names, "weighted", "well_formed"] if k in scores["policy"]]
            x = range(len(keys))
            ax.bar([i - 0.2 for i in x], [scores["reference"][k] for k in keys], 0.4, label="reference")
            ax.bar([i + 0.2 for i in x], [scores["policy"][k] for k in keys], 0.4, label="trained policy")
            ax.set_xticks(list(x), keys, rotation=20)
            ax.set_ylim(0, 1)
        else:
            for label, (steps, values) in panel.items():
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
            ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{os.path.basename(os.path.abspath(out))}: {len(lines)} logged points of metrics.jsonl")
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path + ".tmp.png", dpi=90)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path
