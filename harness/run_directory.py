"""The run directory (--out) and its promises: one run per directory, nothing of another mixed in, files whole.

A run directory holds one run:
    run.json            the config it runs with (written when training starts)
    metrics.jsonl       one line per --log-every steps
    checkpoints/        the latest --keep-checkpoints checkpoints (harness/checkpoints.py)
    policy/, summary.json   when the run has finished
    .lock               held by the process writing here, so that two runs never write into one directory at once
An --out that holds another run's files is refused unless --overwrite (which removes them only once every input has
been checked) or --resume (which needs the same settings and a checkpoint); rerunning the same command continues.
"""
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager

from harness.checkpoints import checkpoints
from harness.distributed import is_main_process

RUN_FILES = ("run.json", "metrics.jsonl", "checkpoints", "policy", "summary.json", "eval.json")
RESUME_NEUTRAL = ("resume", "overwrite", "save_every", "keep_checkpoints", "eval_prompts", "device")


class RunError(ValueError):
    """An --out that cannot hold this run; one line, printed by the command line."""



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
    if not is_main_process():
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
