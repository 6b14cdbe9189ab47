"""The causal LM being aligned, outside the training step: its device, loading it (checked), LoRA, FSDP2 sharding.

train.py, eval.py, the sweeps and the world build all load through here, so a policy always has float32 master
weights and every problem with a model directory is one line naming the flag.
"""
import os
import pickle
import re
import warnings
from contextlib import contextmanager

import torch

from harness.errors import ModelError, first_line


def pick_device(name):
    if name not in ("auto", "cpu", "cuda") or (name == "cuda" and not torch.cuda.is_available()):
        raise ModelError(f"--device: {name!r} is not available; expected auto, cpu or cuda")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def check_model_path(name, flag):
    """A local model directory must hold what from_pretrained needs; say which part is missing, naming the flag.
    Anything that does not look like a path is left to the hub."""
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or name.count("/") > 1
    if not looks_local:
        return
    path = os.path.expanduser(name)
    if not os.path.isdir(path):
        raise ModelError(f"{flag}: {name}: no such directory")
    files = os.listdir(path)
    if "config.json" not in files:
        raise ModelError(f"{flag}: {name}: no config.json (not a Hugging Face model directory)")
    if not any(f.endswith((".safetensors", ".bin")) or f.endswith(".safetensors.index.json") for f in files):
        raise ModelError(f"{flag}: {name}: no weights (*.safetensors or pytorch_model*.bin)")
    if not {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} & set(files):
        raise ModelError(f"{flag}: {name}: no tokenizer (tokenizer.json or tokenizer_config.json); save one beside "
                         "the weights with tokenizer.save_pretrained")
    if _needs_its_own_code(os.path.join(path, "config.json")):
        raise ModelError(f"{flag}: {name}: its config.json names a model type transformers does not define, with code "
                         "of its own to run (auto_map); such code is never run here (trust_remote_code=False)")


def _needs_its_own_code(config_path):
    import json

    from transformers import CONFIG_MAPPING
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        return "auto_map" in config and config.get("model_type") not in CONFIG_MAPPING
    except (OSError, ValueError, TypeError, AttributeError):  # not a JSON mapping: from_pretrained says so its own way
        return False


def load_tokenizer(name, flag="--model"):
    """The tokenizer of a local model directory or a hub id (cheap: the data can be checked with it before the
    weights load), with padding set; one line naming `flag` when it cannot be used."""
    from transformers import AutoTokenizer
    check_model_path(name, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{flag}: could not load {name!r}: {first_line(error)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name, device, flag="--model", head=None, tokenizer=None):
    """Tokenizer (unless given, from load_tokenizer) and model (a causal LM; head: another Auto class) from a local
    directory or a hub id, with float32 master weights; one clear line, naming `flag`, when it cannot be used: a
    missing part, a corrupt weights file, or weights that do not fit the config (which from_pretrained would fill
    with random values, or drop, and carry on), or a vocabulary the tokenizer overflows."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging
    tokenizer = load_tokenizer(name, flag) if tokenizer is None else tokenizer
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its page-long load report: what it finds wrong is said below
    try:
        # float32 master weights whatever the checkpoint holds (transformers 5 loads a bf16 hub model as bf16)
        model, info = (head or AutoModelForCausalLM).from_pretrained(name, dtype=torch.float32,
                                                                   output_loading_info=True,
                                                                   ignore_mismatched_sizes=True,
                                                                   trust_remote_code=False)
    except pickle.UnpicklingError as error:  # torch.load(weights_only=True) refused a pickled weights file
        found = re.search(r"GLOBAL (\S+)", str(error))
        raise ModelError(f"{flag}: {name}: its pickled weights (pytorch_model*.bin) hold more than tensors"
                         f"{f' ({found.group(1)})' if found else ''}, so they are not loaded; save the model as "
                         "safetensors from a copy you trust") from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ModelError(f"{flag}: could not load {name!r}: {first_line(error)}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    shapes = [k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]]  # (key, in weights, in config)
    for kind, keys in (("missing", info["missing_keys"]), ("of another shape", shapes),
                       ("it has no place for", info["unexpected_keys"])):
        if keys:
            raise ModelError(f"{flag}: {name}: its weights do not fit its config ({type(model).__name__}): "
                             f"{len(keys)} tensors {kind}, e.g. {sorted(map(str, keys))[0]!r}")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(f"{flag}: {name}: its tokenizer has {len(tokenizer)} tokens but its embedding only {rows} "
                         "rows; they belong to different models")
    return tokenizer, model.to(device)


def add_lora(model, rank, alpha):
    """LoRA adapters of rank `rank` on every linear layer (peft); only they train."""
    try:
        import peft
    except ImportError:
        raise ModelError("--lora-r needs peft: pip install peft") from None
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers 5 by a name it has deprecated; nothing for a user to do
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return peft.get_peft_model(model, config)



def enable_gradient_checkpointing(model):
    """Non-reentrant activation checkpointing: the graph is walked once per objective, which the reentrant kind
    does not allow. transformers 5 renamed the method; 4.x has only the old name."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def transformer_blocks(model):
    """The model's repeated blocks (LlamaDecoderLayer, Qwen3DecoderLayer, ...), in order: the classes a Hugging Face
    model names in _no_split_modules, found anywhere inside it (also under a peft wrapper)."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model):
    """FSDP2 (torch.distributed.fsdp.fully_shard) over the torchrun processes: every transformer block its own
    group, the rest with the root, as PyTorch's recipe for LLMs does. Parameters become DTensor shards."""
    from torch.distributed.fsdp import fully_shard
    for block in transformer_blocks(model):
        fully_shard(block)
    return fully_shard(model)


@contextmanager
def eval_mode(*models):
    """Switch models to eval mode (no dropout) for the block, then back to the mode each was in."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
