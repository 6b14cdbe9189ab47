"""Checkpoints and exact resume.

    checkpoints/step-000100/
        state/          the trainable parameters and AdamW's state (torch.distributed.checkpoint: one file per
                        process, sharded under FSDP, so a checkpoint costs what the shards cost)
        policy/         the policy in Hugging Face format (safetensors; LoRA: the adapters), loadable on its own
        trainer.pt      step, scheduler, RNG states, the data stream's position, the open logging window
Every checkpoint is written under a temporary name and renamed when complete (a rename is atomic), so a crash, a
kill or a full disk never leaves a half-written checkpoint under a real name; the last `keep` are kept.
Resuming loads the latest complete checkpoint into a freshly built model and optimizer, replays the data stream to
its position and continues: on CPU the result is bit-identical to a run that was never interrupted.
A checkpoint is data, never code: trainer.pt is read with torch.load(weights_only=True), state/.metadata (which
torch.distributed.checkpoint reads with plain pickle.load) with an unpickler that admits only the types such metadata
holds, and the weights are safetensors.
"""
import logging
import os
import pickle
import re
import shutil
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist

from harness.distributed import barrier, is_main_process
from harness.errors import first_line


def checkpoints(out):
    """Complete checkpoints of a run, oldest first (temporary directories of an unfinished save are ignored)."""
    root = os.path.join(out, "checkpoints")
    names = sorted(n for n in os.listdir(root) if n.startswith("step-")) if os.path.isdir(root) else []
    return [os.path.join(root, n) for n in names]


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
    state = _without_tied_copies(model, get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))) if sharded else None
    if is_main_process():
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if lora == "merge":
            model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    barrier()


def _without_tied_copies(model, state):
    """A gathered state dict holds a tied parameter under each of its names (lm_head.weight beside
    model.embed_tokens.weight), as copies save_pretrained cannot tell apart: keep its first name only, as
    save_pretrained does with the model's own tensors."""
    seen, copies = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            copies.add(name)
        seen.add(id(param))
    return {k: v for k, v in state.items() if k not in copies}


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
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    model_state, optimizer_state = _state_dicts(model, optimizer)
    with warnings.catch_warnings(), _plain_errors():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.path.join(tmp, "state"),
                 no_dist=not (dist.is_available() and dist.is_initialized()))
    save_policy(model, tokenizer, os.path.join(tmp, "policy"), "adapters" if lora else None)
    if is_main_process():
        # through a Python file: torch's own writer reports a full disk as "RuntimeError: [enforce fail at ...]"
        with open(os.path.join(tmp, "trainer.pt"), "wb") as f:
            torch.save(trainer_state, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    barrier()
    return final


def load_checkpoint(path, model, optimizer):
    """Load a checkpoint's parameters and optimizer state into a freshly built model and optimizer (sharded or
    not, as they are); returns its trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    for part in ("state/.metadata", "trainer.pt"):  # missing, dcp would log pages of fallbacks before it failed
        if not os.path.isfile(os.path.join(path, part)):
            raise FileNotFoundError(f"its {part} is missing")
    with open(os.path.join(path, "state", ".metadata"), "rb") as f:  # damaged or tampered: refused here, in one line
        try:
            _MetadataUnpickler(f).load()
        except Exception as error:
            raise pickle.UnpicklingError(f"its state/.metadata cannot be read: {first_line(error)}") from None
    model_state, optimizer_state = _state_dicts(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    logging.disable(logging.WARNING)  # torch.distributed.checkpoint logs its fallbacks' tracebacks to the root logger
    try:
        with warnings.catch_warnings(), _plain_errors():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=_metadata_checked_reader(os.path.join(path, "state")),
                     no_dist=not (dist.is_available() and dist.is_initialized()))
    finally:
        logging.disable(logging.NOTSET)
    # not strict: the frozen weights (LoRA's base model) are not in a checkpoint; dcp.load has already failed on any
    # trainable tensor a checkpoint lacks
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))
    try:
        return torch.load(os.path.join(path, "trainer.pt"), weights_only=True)
    except pickle.UnpicklingError as error:  # torch's message would suggest weights_only=False: never
        found = re.search(r"GLOBAL (\S+)", str(error))
        raise pickle.UnpicklingError(f"its trainer.pt holds more than a trainer state"
                                     f"{f' ({found.group(1)})' if found else ''}: it was not written by this code") \
            from None


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only what torch.distributed.checkpoint's metadata is made of: its metadata dataclasses, the storage
    records of its file system writer, shapes, dtypes, layouts and paths. Anything else, such as the os.system a
    tampered file would call, is refused before it runs."""

    def find_class(self, module, name):
        import pathlib

        import torch.distributed.checkpoint.metadata as metadata
        value = getattr(metadata, name, None) if module == "torch.distributed.checkpoint.metadata" else None
        allowed = (isinstance(value, type)
                   or (module, name) in {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                                         ("torch", "Size"), ("torch.serialization", "_get_layout")}
                   or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
                   or module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath",
                                                       "PureWindowsPath") and hasattr(pathlib, name))
        if not allowed:
            raise pickle.UnpicklingError(f"state/.metadata refers to {module}.{name}, which checkpoint metadata never "
                                         "holds: it was not written by this code")
        return super().find_class(module, name)


def _metadata_checked_reader(path):
    """torch.distributed.checkpoint's FileSystemReader, reading .metadata with _MetadataUnpickler."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(os.path.join(path, ".metadata"), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = getattr(self, "load_id", None)
            return metadata

    return Reader(path)


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
