"""Runs that survive: the output directory, checkpoints and exact resume.

A run directory (--out) holds one run and nothing of another:
    run.json            the config it runs with (written when training starts)
    metrics.jsonl       one line per --log-every steps
    checkpoints/step-000100/
        state/          the trainable parameters and AdamW's state (torch.distributed.checkpoint: one file per
                        process, sharded under FSDP, so a checkpoint costs what the shards cost)
        policy/         the policy in Hugging Face format (safetensors; LoRA: the adapters), loadable on its own
        trainer.pt      step, scheduler, RNG states, the data stream's position, the open logging window
    policy/, summary.json   when the run has finished
    .lock               held by the process writing here, so that two runs never write into one directory at once
Every checkpoint is written under a temporary name and renamed when complete (a rename is atomic), so a crash, a
kill or a full disk never leaves a half-written checkpoint under a real name; the last `keep` are kept.
Resuming loads the latest complete checkpoint into a freshly built model and optimizer, replays the data stream to
its position and continues: on CPU the result is bit-identical to a run that was never interrupted.
"""
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist

RUN_FILES = ("run.json", "metrics.jsonl", "checkpoints", "policy", "summary.json", "eval.json")
RESUME_NEUTRAL = ("resume", "overwrite", "save_every", "keep_checkpoints", "eval_prompts", "device")


class RunError(ValueError):
    """An --out that cannot hold this run; one line, printed by the command line."""


def _rank0():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_writable(path, flag="--out"):
    """Fail now, before any model is loaded, if `path` cannot become a directory this process can write: by
    trying (a read-only file system, /proc, a name too long or a symlink loop all pass a permission check), and
    leaving nothing behind."""
    if not path:
        raise RunError(f"{flag}: empty; expected a directory")
    try:
        path.encode("utf-8")  # the tokenizer's and safetensors' writers take UTF-8 paths only
    except UnicodeEncodeError:
        raise RunError(f"{flag}: {path!r} is not valid UTF-8; rename it") from None
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"{flag}: {path} is a file, not a directory")
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunError(f"{flag}: {path} lies under {parent}, which is not a directory")
    try:
        if parent == path:
            with tempfile.TemporaryFile(dir=path):
                pass
        else:  # the missing directories, made inside a uniquely named one: processes probing at once never collide
            with tempfile.TemporaryDirectory(dir=parent) as trial:
                os.makedirs(os.path.join(trial, os.path.relpath(path, parent)))
    except OSError as error:
        raise RunError(f"{flag}: cannot write to {path}: {error.strerror or error}") from None


def checkpoints(out):
    """Complete checkpoints of a run, oldest first (temporary directories of an unfinished save are ignored)."""
    root = os.path.join(out, "checkpoints")
    names = sorted(n for n in os.listdir(root) if n.startswith("step-")) if os.path.isdir(root) else []
    return [os.path.join(root, n) for n in names]


def _recorded_config(out):
    """The config in out/run.json, or None when there is none or it cannot be read."""
    try:
        with open(os.path.join(out, "run.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _comparable(config):
    return {k: v for k, v in config.items() if k not in RESUME_NEUTRAL}


def open_run(config, resume, overwrite):
    """Decide what --out holds before anything expensive runs. Returns the checkpoint to resume from, or None to
    start afresh. Refuses, with one line, to mix this run with another: an --out that holds another run's files
    needs --overwrite (which replaces them) or --resume (which needs the same config and a checkpoint)."""
    out = config["out"]
    check_writable(out)
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    latest = checkpoints(out)[-1] if checkpoints(out) else None
    if overwrite or not found:
        if resume:
            raise RunError(f"--resume: {out} holds no run to resume" if not found else
                           "--resume and --overwrite contradict each other: pick one")
        return None
    previous = _recorded_config(out)
    same = previous is not None and _comparable(previous) == _comparable(config)
    if same and latest is not None:
        return latest  # --resume, or the same command rerun after an interruption: continue where it stopped
    if resume:
        if same:
            raise RunError(f"--resume: {out} has no complete checkpoint yet (was --save-every 0?)")
        differing = sorted(k for k in set(_comparable(previous or {})) | set(_comparable(config))
                           if (previous or {}).get(k) != config.get(k))
        raise RunError(f"--resume: {out} holds a run with other settings ({', '.join(differing[:4])}); "
                       "resume with the same flags, or --overwrite")
    if same:
        return None  # the same run, stopped before its first checkpoint or finished without one: train it again
    raise RunError(f"--out: {out} holds another run ({', '.join(found)}); pass --overwrite to replace it or "
                   "--resume to continue it")


def left_behind(config):
    """What an interrupt outside the training loop (loading, evaluating, saving) leaves of this run, in words."""
    recorded = _recorded_config(config["out"])
    kept = checkpoints(config["out"]) if recorded is not None and _comparable(recorded) == _comparable(config) else []
    if not kept:
        return "no checkpoint of this run was saved"
    again = "the same command without --overwrite" if config["overwrite"] else "the same command again"
    return f"the last checkpoint, {kept[-1]}, is intact; run {again} to continue from it"


@contextmanager
def running(config, resumed):
    """From just before the first step to the end of the run, on rank 0: hold --out's lock, so that a second run
    started into it meanwhile stops with one line instead of removing or mixing this one's files; clear what an
    earlier run left (--overwrite: inputs are all checked by now, so a bad flag never costs the old run); write
    run.json."""
    out = config["out"]
    if not _rank0():
        yield
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".lock"), "w") as lock:  # closing it releases the lock, however the run ends
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not a POSIX system: no lock
            pass
        except BlockingIOError:
            raise RunError(f"--out: another run is writing to {out} right now; let it finish or pick another "
                           "--out") from None
        if not resumed:
            for name in RUN_FILES:
                path = os.path.join(out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        write_json(os.path.join(out, "run.json"), config)
        yield


def strict_json(value):
    """value with every non-finite float as None: JSON has no NaN or Infinity (Python writes them, strict readers
    refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path, value, strict=True):
    """Write JSON under a temporary name, then rename: the file is whole or absent. strict=False keeps NaN as
    Python writes and reads it (caches that only this code reads back)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(strict_json(value) if strict else value, f, indent=2)
    os.replace(tmp, path)


def _state_dicts(model, optimizer):
    """The trainable parameters' and the optimizer's state dicts, sharded as the model is (frozen weights, such as
    LoRA's base model, come from --model again on resume)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def save_policy(model, tokenizer, path, lora):
    """The policy in Hugging Face format under `path`, written whole or not at all. Under FSDP the shards are
    gathered first (every process takes part; rank 0 writes). LoRA: lora="adapters" writes the adapters alone (peft
    format); lora="merge" merges them into the model, in place, and writes a plain model that from_pretrained loads
    without peft (the end of a run)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor
    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)) \
        if sharded else None
    if _rank0():
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if lora == "merge":
            model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    _barrier()


@contextmanager
def _plain_errors():
    """torch.distributed.checkpoint wraps every process's error into one CheckpointException (a BaseException);
    unwrap it, so that a full disk reaches the training loop as the OSError it is."""
    from torch.distributed.checkpoint.api import CheckpointException
    try:
        yield
    except CheckpointException as error:
        raise next(iter(error.failures.values()))[0] from None


def save_checkpoint(out, step, model, tokenizer, optimizer, trainer_state, keep, lora):
    """Write checkpoints/step-<step>/ atomically (every process takes part) and keep only the last `keep`."""
    import torch.distributed.checkpoint as dcp
    root = os.path.join(out, "checkpoints")
    final, tmp = os.path.join(root, f"step-{step:06d}"), os.path.join(root, f".tmp-step-{step:06d}")
    if _rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    model_state, optimizer_state = _state_dicts(model, optimizer)
    with warnings.catch_warnings(), _plain_errors():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.path.join(tmp, "state"),
                 no_dist=not (dist.is_available() and dist.is_initialized()))
    save_policy(model, tokenizer, os.path.join(tmp, "policy"), "adapters" if lora else None)
    if _rank0():
        torch.save(trainer_state, os.path.join(tmp, "trainer.pt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    _barrier()
    return final


def load_checkpoint(path, model, optimizer):
    """Load a checkpoint's parameters and optimizer state into a freshly built model and optimizer (sharded or
    not, as they are); returns its trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    for part in ("state/.metadata", "trainer.pt"):  # missing, dcp would log pages of fallbacks before it failed
        if not os.path.isfile(os.path.join(path, part)):
            raise FileNotFoundError(f"its {part} is missing")
    model_state, optimizer_state = _state_dicts(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings(), _plain_errors():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=os.path.join(path, "state"),
                 no_dist=not (dist.is_available() and dist.is_initialized()))
    # not strict: the frozen weights (LoRA's base model) are not in a checkpoint; dcp.load has already failed on any
    # trainable tensor a checkpoint lacks
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    return torch.load(os.path.join(path, "trainer.pt"), weights_only=True)


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reference_cache_path(out, model_name, pairs, settings):
    """Where --precompute-ref keeps the reference's log-probs: a file in --out whose name is a hash of everything
    they depend on (the model's files, or its hub revision; every pair's text; the tokenisation settings), so a
    stale cache is never read: change any of them and the name changes."""
    digest = hashlib.sha256(json.dumps([model_name, settings]).encode())
    if os.path.isdir(model_name):
        for name in sorted(os.listdir(model_name)):
            stat = os.stat(os.path.join(model_name, name))
            digest.update(f"{name} {stat.st_size} {stat.st_mtime_ns}".encode())
    for pair in pairs:
        digest.update("\0".join((pair.prompt, pair.response_a, pair.response_b)).encode() + b"\1")
    return os.path.join(out, f"reference_logps-{digest.hexdigest()[:16]}.safetensors")


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

    def requested(self, distributed):
        """The signal number if any process got one (every process must stop at the same step)."""
        if not distributed:
            return self.signum
        flag = torch.tensor([self.signum])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


