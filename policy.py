"""The causal LM being aligned, outside the training step: load it, pick its device, add LoRA, sample from it, and
score its samples (their log-probs, mean scores with errors, KL to the reference).

train.py, eval.py, pareto.py and world.py all go through here, so a policy is always loaded with float32 master
weights and sampled from the same prompt tokens that training conditions it on (dpo.prompt_ids).
"""
import os
import warnings
from contextlib import contextmanager

import torch
from tqdm import tqdm

import dpo
from metrics import kl_estimate, mean_se
from preference_data import first_line


class ModelError(ValueError):
    """A model, tokenizer or device that cannot be used; one line naming the flag, printed by the front ends."""


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


def load_tokenizer(name, flag="--model"):
    """The tokenizer of a local model directory or a hub id (cheap: the data can be checked with it before the
    weights load), with padding set; one line naming `flag` when it cannot be used."""
    from transformers import AutoTokenizer
    check_model_path(name, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
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
                                                                   ignore_mismatched_sizes=True)
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


@torch.no_grad()
def sample(model, tokenizer, prompts, num_samples, temperature, max_new_tokens=64, seed=0, batch_size=32,
           max_prompt_length=192):
    """num_samples responses per prompt, generated for batches of left-padded prompts (so every row continues from
    its own last prompt token), each prompt tokenized as training tokenizes it. Returns (texts, batches): texts[i]
    lists prompt i's responses, cut at the first EOS; each batch holds input_ids, attention_mask and completion_mask
    (N, T), the last marking the sampled tokens up to and including the first EOS, for sampled_logps.
    Deterministic in seed; the global RNG and the model's mode are left as found."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, batches = [], []
    with torch.random.fork_rng(devices=[]), eval_mode(model):
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", leave=False, dynamic_ncols=True):
            rows = [dpo.truncate_prompt(ids, max_prompt_length, tokenizer.bos_token_id)
                    for ids in dpo.prompt_ids(tokenizer, prompts[start:start + batch_size])]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            # top_k=0, top_p=1: sample the model's own distribution, whatever its generation_config suggests
            out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            new = out[:, width:]
            is_eos = (new == tokenizer.eos_token_id).long()
            keep = (is_eos.cumsum(-1) - is_eos) == 0  # every token up to and including the first EOS
            prompt_mask = attention.repeat_interleave(num_samples, dim=0)
            batches.append({"input_ids": out, "attention_mask": torch.cat([prompt_mask, keep.long()], 1),
                            "completion_mask": torch.cat([torch.zeros_like(prompt_mask), keep.long()], 1)})
            decoded = [tokenizer.decode(ids[k & (e == 0)], skip_special_tokens=True).strip()
                       for ids, k, e in zip(new, keep, is_eos)]
            texts += [decoded[i:i + num_samples] for i in range(0, len(decoded), num_samples)]
    return texts, batches


@torch.no_grad()
def sampled_logps(model, batches, rows_per_forward=32):
    """log pi(y|x) of the sampled token ids (re-tokenized text need not give the same ids): a list of N floats.
    Position ids skip the left padding, as generate's do, so each row is scored as it was sampled. A few rows per
    forward: the (rows, T, vocabulary) logits of a real model are the memory peak."""
    out = []
    with eval_mode(model):
        for b in batches:
            for i in range(0, len(b["input_ids"]), rows_per_forward):
                ids, mask, completion = (b[k][i:i + rows_per_forward] for k in ("input_ids", "attention_mask",
                                                                                 "completion_mask"))
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
                out += dpo.sequence_logps(logits, ids, completion)[0].tolist()
    return out


def evaluate_samples(policy, tokenizer, prompts, score=None, batch_scores=None, num_samples=4, temperature=0.6,
                     seed=0, reference=None, max_new_tokens=64, batch_size=32, max_prompt_length=192):
    """Mean and standard error ("<key>_se") of every score over num_samples responses per prompt, and, given a
    reference, KL(policy || reference). Returns (scores, a few scored examples).

    score(prompt, response) -> dict of numbers (the world's exact scorer), or None to report the length in tokens;
    batch_scores: {name: f(prompts, responses) -> list of floats} (reward models), added to each row.
    """
    texts, batches = sample(policy, tokenizer, prompts, num_samples, temperature, max_new_tokens, seed, batch_size,
                            max_prompt_length)
    flat_prompts, flat = [p for p in prompts for _ in range(num_samples)], [r for rs in texts for r in rs]
    if score is not None:
        rows = [score(p, r) for p, r in zip(flat_prompts, flat)]
    else:
        rows = [{"tokens": int(m.sum())} for b in batches for m in b["completion_mask"]]
    for name, scorer in (batch_scores or {}).items():
        for row, s in zip(rows, scorer(flat_prompts, flat)):
            row[name] = s
    scores = {"samples": len(flat)}
    for key in rows[0]:
        scores[key], scores[key + "_se"] = mean_se([row[key] for row in rows], num_samples)
    if reference is not None:  # KL is an expectation under pi itself: draw temperature-1 samples for it
        if temperature != 1.0:
            _, batches = sample(policy, tokenizer, prompts, num_samples, 1.0, max_new_tokens, seed + 1, batch_size,
                                max_prompt_length)
        scores["kl"], scores["kl_se"] = kl_estimate(sampled_logps(policy, batches, batch_size),
                                                    sampled_logps(reference, batches, batch_size), num_samples)
    return scores, [{"prompt": p, "response": r, **row} for p, r, row in list(zip(flat_prompts, flat, rows))[:6]]
