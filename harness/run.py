"""The life of a training run around the RACO step. train.py enters it through these calls:

    with Run(cfg) as run:        --out claimed until the run ends; every flag checked; what --out holds decided
                                 (from scratch, resumed, already finished, refused); torchrun's processes joined
        run.finished             the summary of this very run when it has finished: nothing left to do
        run.start(...)           resume from the latest checkpoint, or score the reference first; then, every
                                 input checked, clear what --overwrite replaces and record the config and inputs
        for step in run.steps(): the steps left, under a progress bar; Ctrl-C and SIGTERM finish the step
            run.logs(step)       whether this step is logged (every --log-every steps, and the last)
            run.everywhere(flag) a flag AND-ed over the processes
            run.end_step(...)    log; checkpoint; True when a signal asks the loop to stop (a checkpoint saved);
                                 one line and exit 1 after --max-bad-steps skipped in a row
        run.interrupted          the signal that stopped the loop (0 if none): exit code 128 + it
        run.finish(...)          the policy (Hugging Face format) and summary.json, each written whole
    run.report(summary)          the scores beside the reference's, warnings, where everything is

Everything here is bookkeeping: the step itself (batch, losses, gradients, direction, AdamW) is train.py's.
"""
import dataclasses
import json
import math
import os
import signal
import sys
import time

import torch

import world
from harness import checkpoints, distributed
from harness.checks import check_config
from harness.command_line import use_threads
from harness.errors import RunError, TrainingError, first_line
from harness.models import pick_device
from harness.reporting import Reporters, curves, parse_report_to
from harness.run_directory import RunLock, begin, input_fingerprints, open_run, write_json

ACCURACY = "/rewards/accuracies"  # the metric the progress bar shows per objective, beside the weighted loss


class Run:
    def __init__(self, cfg):
        self.started = time.time()
        check_config(cfg)
        self.cfg, self.config = cfg, dataclasses.asdict(cfg)
        self.rank, self.world_size, self.device = distributed.start(pick_device(cfg.device))
        use_threads(cfg.threads, self.device)
        self.main_process = self.rank == 0
        self.claim = RunLock(cfg.out) if self.main_process else None  # before any work, held to the end
        self.began, self.log, self.progress, self.interrupts, self.reporters = False, None, None, None, None
        self.state, self.interrupted = None, 0
        try:
            self.inputs = input_fingerprints(cfg.data, cfg.model)
            # a checkpoint to resume from (or None), and the summary if this very run has finished (or None)
            self.resume_from, self.finished = open_run(self.config, cfg.resume, cfg.overwrite, self.inputs)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        self.evaluates = self.main_process and not cfg.fsdp  # sampling a sharded model needs every process in step
        self.step = 0
        torch.manual_seed(cfg.seed)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self._stop_watching()
        if self.claim is not None:
            self.claim.release(unused=not self.began)  # stopped before its first write: no trace of it is left
            self.claim = None
        if isinstance(error, OSError) and self.began:  # a full disk, a lost mount: one line; the last checkpoint stays
            raise TrainingError(f"could not write to {self.cfg.out}: {error.strerror or error}") from None
        if kind is None:
            distributed.stop()
        return False

    def start(self, policy, tokenizer, optimizer, scheduler, stream, score_reference):
        """Resume (the parameters, AdamW, the scheduler, the RNG, the data stream's position) or start afresh,
        scoring the reference first (score_reference() -> scores or None); then record the run in --out."""
        cfg = self.cfg
        self.policy, self.tokenizer, self.optimizer, self.scheduler = policy, tokenizer, optimizer, scheduler
        if self.resume_from:
            try:
                state = checkpoints.load_checkpoint(self.resume_from, policy, optimizer)
            except Exception as error:  # written atomically, so damaged afterwards: say which, not a reader's traceback
                raise RunError(f"--resume: {self.resume_from} cannot be read ({type(error).__name__}: "
                               f"{first_line(error)}); delete it to resume from the one before, or pass --overwrite") \
                    from None
            scheduler.load_state_dict(state["scheduler"])
            checkpoints.set_rng_state(state["rng"])
            for _ in range(state["step"] * cfg.grad_accum):  # replay the data stream to where the checkpoint was
                next(stream)
            if self.main_process:
                print(f"resuming from {self.resume_from}", file=sys.stderr)
        else:
            state = dict(step=0, window={}, final={}, bad_steps=0, skipped=0, before=score_reference())
        self.state, self.saved, self.began = state, self.resume_from, True  # from here on it writes into --out
        if self.main_process:
            begin(self.config, self.inputs, self.resume_from is not None)
            self.reporters = Reporters(parse_report_to(cfg.report_to), cfg.out, self.config)

    def steps(self):
        """The steps left, from the checkpoint resumed (or 1) to --steps. While they run, metrics.jsonl is open,
        a progress bar shows, and SIGINT / SIGTERM ask for a checkpoint at the end of the step."""
        from tqdm import tqdm
        cfg, state = self.cfg, self.state
        if self.main_process:  # on resume, the lines written after the checkpoint go; the rest is written back whole
            path = os.path.join(cfg.out, "metrics.jsonl")
            kept = [line for line in open(path) if _step_of_line(line) <= state["step"]] if os.path.exists(path) else []
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)
            self.log = open(path, "a")
        self.progress = tqdm(range(state["step"] + 1, cfg.steps + 1), disable=not self.main_process, desc=cfg.method,
                             dynamic_ncols=True, initial=state["step"], total=cfg.steps)
        self.interrupts = Interrupts()
        for step in self.progress:
            self.step = step
            yield step
        self._stop_watching()  # the loop is done: Ctrl-C during the final evaluation and save stops at once

    def _stop_watching(self):
        for resource in (self.progress, self.log, self.reporters):
            if resource is not None:
                resource.close()
        if self.interrupts is not None:
            self.interrupts.restore()
        self.progress, self.log, self.interrupts, self.reporters = None, None, None, None

    def logs(self, step):
        return step % self.cfg.log_every == 0 or step == self.cfg.steps

    def everywhere(self, flag):
        return distributed.everywhere(flag)

    def end_step(self, step, metrics):
        """After the optimizer's step: metrics is the step's (floats), or None if the step was skipped for
        non-finite losses or direction. Logs the mean of the window every --log-every steps; stops with one line
        after --max-bad-steps skipped in a row; checkpoints every --save-every steps and on a signal. Returns True
        when a signal asks the loop to stop there (its checkpoint saved; self.interrupted holds the signal)."""
        cfg, state = self.cfg, self.state
        if metrics is not None:
            state["bad_steps"] = 0
            for k, v in metrics.items():
                state["window"].setdefault(k, []).append(v)
        else:  # no update; counted; the run stops if it keeps happening
            state["bad_steps"] += 1
            state["skipped"] += 1
            state["window"].setdefault("skipped_steps", []).append(1.0)
        state["step"] = step
        if self.logs(step):
            logged = {k: sum(v) / len(v) for k, v in state["window"].items()}
            state["final"], state["window"] = distributed.mean_over_processes(logged), {}
            if self.main_process:
                self.log.write(json.dumps({"step": step, **state["final"]}) + "\n")
                self.log.flush()
                self.reporters.log(step, state["final"])
                shown = state["final"]
                self.progress.set_postfix({"loss": f"{shown.get('loss/weighted', math.nan):.3f}",
                                           **{f"acc/{k[:-len(ACCURACY)]}": f"{v:.2f}"
                                              for k, v in shown.items() if k.endswith(ACCURACY)}})
        if state["bad_steps"] >= cfg.max_bad_steps:
            raise TrainingError(
                f"stopped at step {step}: {state['bad_steps']} consecutive steps had non-finite losses or "
                f"gradients, so the parameters have diverged ({self._suspects()}); "
                + (f"the last checkpoint, {self.saved}, is intact" if self.saved else "no checkpoint was saved"))
        signum = distributed.largest(self.interrupts.signum)  # every process stops at the same step
        due = cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps) and not state["bad_steps"]
        if signum or due:  # never a periodic checkpoint of parameters that just failed a step
            self.saved = checkpoints.save_checkpoint(
                cfg.out, step, self.policy, self.tokenizer, self.optimizer,
                dict(state, scheduler=self.scheduler.state_dict(), rng=checkpoints.rng_state()),
                cfg.keep_checkpoints, cfg.lora_r > 0)
        if signum:
            self.progress.close()
            if self.main_process:
                print(f"{signal.Signals(signum).name} at step {step}: checkpoint saved in {self.saved}; run the "
                      "same command again to continue from it", file=sys.stderr)
            self.interrupted = signum
        return bool(signum)

    def _suspects(self):
        cfg = self.cfg
        decay = f", or --weight-decay {cfg.weight_decay:g} (lr x weight_decay = {cfg.lr * cfg.weight_decay:.3g})" \
            if cfg.weight_decay else ""
        return f"is --lr {cfg.lr:g} too high{decay}?"

    def finish(self, policy, tokenizer, names, weights, after):
        """The trained policy in Hugging Face format (LoRA merged into it) and summary.json; after: its scores. A
        run whose steps were mostly skipped saves no policy: its parameters have diverged."""
        cfg, state = self.cfg, self.state
        if 2 * state["skipped"] > cfg.steps:
            raise TrainingError(f"{state['skipped']} of {cfg.steps} steps were skipped for non-finite losses or "
                                f"gradients: the policy has diverged ({self._suspects()}); no policy was saved")
        checkpoints.save_policy(policy, tokenizer, os.path.join(cfg.out, "policy"), "merge" if cfg.lora_r > 0 else None)
        summary = {"config": self.config, "objectives": names, "weights": weights, "final": state["final"],
                   "skipped_steps": state["skipped"], "resumed_from": self.resume_from,
                   "eval": {"reference": state["before"], "policy": after},
                   "seconds": round(time.time() - self.started, 1)}
        if self.main_process:
            write_json(os.path.join(cfg.out, "summary.json"), summary)
            curves(cfg.out, names, summary["eval"])
        return summary

    def report(self, summary):
        """On the main process: the scores beside the reference's, a warning for skipped steps, where it all is."""
        if not self.main_process:
            return None
        cfg, state, scores = self.cfg, self.state, summary["eval"]
        if state is None:  # finished before: nothing was done
            print(f"{cfg.out} holds this run, finished: nothing to do (--overwrite trains it again)", file=sys.stderr)
        if scores["reference"] is not None:
            world.print_comparison(scores["reference"], scores["policy"], summary["objectives"], summary["weights"])
        if state is not None and state["skipped"]:  # fewer than half, and never --max-bad-steps in a row: not silent
            ending = f", the last {state['bad_steps']} in a row: the policy has likely diverged " \
                     f"({self._suspects()})" if state["bad_steps"] else ""
            print(f"warning: {state['skipped']} of {cfg.steps} steps were skipped for non-finite losses or gradients"
                  f"{ending}; see skipped_steps in metrics.jsonl", file=sys.stderr)
        print(f"{time.time() - self.started:.0f} s; policy in {os.path.join(cfg.out, 'policy')}, metrics in "
              f"{cfg.out}/metrics.jsonl (drawn in curves.png) and {cfg.out}/summary.json")
        return summary


def _step_of_line(line):
    """The step of a metrics.jsonl line; a line cut short by a kill belongs to no step that was saved."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class Interrupts:
    """SIGINT and SIGTERM ask the loop to finish its step, save a checkpoint and stop; a second signal stops at once."""

    def __init__(self):
        self.signum = 0
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        self.signum = signum
        self.restore()

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
