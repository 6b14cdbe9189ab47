"""The run directory (--out) and its promises: one run per directory, nothing of another mixed in, files whole.

A run directory holds one run:
    run.json            the config it runs with (written when training starts; `train.py --config` reads it)
    inputs.json         fingerprints of the data and the model it started from: a resume over other inputs is refused
    metrics.jsonl       one line per --log-every steps
    checkpoints/        the latest --keep-checkpoints checkpoints (harness/checkpoints.py)
    policy/, summary.json   when the run has finished
    .lock               held by the process writing here, so that two runs never write into one directory at once
An --out that holds another run's files is refused unless --overwrite (which removes them only once every input has
been checked) or --resume (which needs the same settings and a checkpoint); rerunning the same command continues,
and on a finished run does nothing. A run claims its --out before any work and holds it to its end.
"""
import hashlib
import json
import math
import os
import shutil
import tempfile

from harness.errors import RunError

from harness.checkpoints import checkpoints

RUN_FILES = ("run.json", "inputs.json", "metrics.jsonl", "checkpoints", "policy", "summary.json", "eval.json")
RESUME_NEUTRAL = ("resume", "overwrite", "save_every", "keep_checkpoints", "eval_prompts", "device", "threads",
                  "report_to", "allow_unknown_tokens")


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


class RunLock:
    """--out held by this process (rank 0 under torchrun) from before any work to the end of the run, with an
    exclusive lock on out/.lock: a second run started into it meanwhile stops with one line instead of removing or
    mixing this one's files. release(unused=True) also removes the directories the claim made, if nothing but the
    lock was written: a run stopped by bad input leaves no trace."""

    def __init__(self, out):
        check_writable(out)
        self.out, self.made = os.path.abspath(out), None
        for above in _ancestors(self.out):
            if os.path.isfile(os.path.join(above, "run.json")):
                raise RunError(f"--out: {out} lies inside the run in {above}, whose files it would mix with; pick a "
                               "directory of its own")
        parent = self.out
        while not os.path.exists(parent):
            self.made, parent = parent, os.path.dirname(parent)  # the outermost directory this claim makes
        os.makedirs(self.out, exist_ok=True)
        self.lock = open(os.path.join(self.out, ".lock"), "a")  # closing it releases the lock, however the run ends
        try:
            import fcntl
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not a POSIX system: no lock
            pass
        except BlockingIOError:
            self.lock.close()
            raise RunError(f"--out: another run is writing to {out} right now; let it finish or pick another "
                           "--out") from None

    def release(self, unused):
        self.lock.close()
        if unused and self.made is not None and os.listdir(self.out) == [".lock"]:
            shutil.rmtree(self.made)


def _ancestors(path):
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        yield path


def input_fingerprints(data, model):
    """What a run started from: for each local path, a hash of its files' names, sizes and contents (beyond 64 MiB, of
    a file's first and last 4 MiB: a changed weights file changes both); a hub id stands for itself."""
    return {"data": _fingerprint(data), "model": _fingerprint(model)}


def _fingerprint(path):
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # .cache/ of a hub download, .git/: not the model
            files += [os.path.join(root, name) for name in names if not name.startswith(".")]
        files.sort()
    else:  # a hub id, or a path that is no regular file (reading it is the data loader's to refuse)
        return path
    digest = hashlib.sha256()
    for name in files:
        if not os.path.isfile(name):  # a FIFO or device inside a directory: never read it
            continue
        size = os.path.getsize(name)
        digest.update(f"{os.path.relpath(name, path)}\0{size}\0".encode())
        with open(name, "rb") as f:
            if size <= 64 << 20:
                digest.update(f.read())
            else:
                digest.update(f.read(4 << 20))
                f.seek(size - (4 << 20))
                digest.update(f.read())
    return digest.hexdigest()


def _read_json(out, name):
    """out/name as JSON, or None when there is none or it cannot be read."""
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def same_settings(config, other):
    """Whether two configs train the same run: equal but for the flags that do not change what is trained."""
    comparable = [{k: v for k, v in c.items() if k not in RESUME_NEUTRAL} for c in (config, other)]
    return comparable[0] == comparable[1]


def open_run(config, resume, overwrite, inputs):
    """Decide what --out holds before anything expensive runs: (the checkpoint to resume from, or None; the summary
    of this very run if it has finished, or None). Refuses, with one line, to mix this run with another: an --out
    that holds another run's files needs --overwrite (which replaces them) or --resume (which needs the same config
    and a checkpoint), and a run is never continued, nor reported finished, over inputs other than it started from."""
    out = config["out"]
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    latest = checkpoints(out)[-1] if checkpoints(out) else None
    if overwrite or not found:
        if resume:
            raise RunError(f"--resume: {out} holds no run to resume" if not found else
                           "--resume and --overwrite contradict each other: pick one")
        return None, None
    previous = _read_json(out, "run.json")
    same = previous is not None and same_settings(previous, config)
    finished = _read_json(out, "summary.json") if os.path.isdir(os.path.join(out, "policy")) else None
    if same and (latest is not None or finished is not None):
        recorded = _read_json(out, "inputs.json") or inputs  # a run from before inputs were recorded: trusted
        changed = [f"the {kind} ({config[kind]})" for kind in ("data", "model") if recorded.get(kind) != inputs[kind]]
        if changed:
            raise RunError(f"--out: {out} holds this run, but {' and '.join(changed)} changed since it began; "
                           "restore what it trained on to continue, or pass --overwrite to start again")
        # the same command again: a finished run is done; an interrupted one continues where it stopped
        return (None, finished) if finished is not None else (latest, None)
    if resume:
        if same:
            raise RunError(f"--resume: {out} has no complete checkpoint yet (was --save-every 0?)")
        differing = sorted(k for k in set(previous or {}) | set(config)
                           if k not in RESUME_NEUTRAL and (previous or {}).get(k) != config.get(k))
        raise RunError(f"--resume: {out} holds a run with other settings ({', '.join(differing[:4])}); "
                       "resume with the same flags, or --overwrite")
    if same:
        return None, None  # the same run, stopped before its first checkpoint: train it again
    raise RunError(f"--out: {out} holds another run ({', '.join(found)}); pass --overwrite to replace it or "
                   "--resume to continue it")


def resumable(config, inputs):
    """Whether --out holds this very run, interrupted after a checkpoint and not finished, over the same inputs: what
    the same command continues (the sweeps ask before they pass --overwrite)."""
    out = config["out"]
    previous = _read_json(out, "run.json")
    return (previous is not None and same_settings(previous, config) and bool(checkpoints(out))
            and not os.path.exists(os.path.join(out, "summary.json")) and _read_json(out, "inputs.json") == inputs)


def left_behind(config):
    """What an interrupt outside the training loop (loading, evaluating, saving) leaves of this run, in words."""
    recorded = _read_json(config["out"], "run.json")
    kept = checkpoints(config["out"]) if recorded is not None and same_settings(recorded, config) else []
    if not kept:
        return "no checkpoint of this run was saved"
    again = "the same command without --overwrite" if config["overwrite"] else "the same command again"
    return f"the last checkpoint, {kept[-1]}, is intact; run {again} to continue from it"


def begin(config, inputs, resumed):
    """Just before the first step, every input checked: clear what an earlier run left (unless resuming; with
    --overwrite this is the first thing removed), and record the config and the inputs."""
    out = config["out"]
    if not resumed:
        for name in RUN_FILES:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    write_json(os.path.join(out, "run.json"), config)
    write_json(os.path.join(out, "inputs.json"), inputs)


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
