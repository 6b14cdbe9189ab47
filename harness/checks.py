"""train.py's input, checked before anything expensive runs: every flag at once, then the data with its tokenizer,
then the model. What fails is one line naming the flag, file, line or field (harness/command_line.py)."""
import dataclasses
import math
import sys

import world
from cagrad import METHODS
from harness.batches import adds_bos
from harness.command_line import SEED_LIMIT, check_c, check_flags
from harness.distributed import launched_by_torchrun
from harness.models import pick_device, transformer_blocks
from harness.errors import DataError, UsageError, first_line
from harness.preference_data import load_pairs
from harness.reporting import parse_report_to
from harness.scale import SOLVE_PER

TRAIN_METHODS = METHODS + ("amopo",)  # AMoPO changes the loss, not the combination: its losses are weighted (lw)
UNKNOWN_WARNED, UNKNOWN_REFUSED = 0.01, 0.25  # shares of the data's tokens that the tokenizer maps to its unknown token


def weight_values(text):
    """--weights' numbers as written (comma-separated), not yet checked or normalised."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights: expected comma-separated numbers, got {text!r}") from None


def parse_weights(text, num_objectives=None):
    """--weights as a list on the simplex (checked up front without num_objectives, then against the data's)."""
    weights = weight_values(text)
    if any(w < 0 or not math.isfinite(w) for w in weights) or max(weights) <= 0:
        raise UsageError(f"--weights: expected finite non-negative weights with a positive sum, got {text!r}")
    if num_objectives is not None and len(weights) != num_objectives:
        raise UsageError(f"--weights: got {len(weights)} weights for {num_objectives} objectives")
    weights = [w / max(weights) for w in weights]  # to at most 1 first: 1e308 + 1e308 would overflow
    return [w / sum(weights) for w in weights]


def check_config(cfg):
    """Every flag that can be checked without loading anything."""
    if cfg.method not in TRAIN_METHODS:  # the flag's choices: cagrad's methods, and AMoPO
        raise UsageError(f"--method: unknown method {cfg.method!r}; expected one of {', '.join(TRAIN_METHODS)}")
    check_c(cfg.c)
    parse_weights(cfg.weights)
    parse_report_to(cfg.report_to)
    check_flags(cfg, [("beta", 0 < cfg.beta < math.inf), ("lr", 0 < cfg.lr < math.inf), ("steps", cfg.steps > 0),
                      ("batch_size", cfg.batch_size > 0), ("grad_accum", cfg.grad_accum > 0),
                      ("lora_r", cfg.lora_r >= 0), ("lora_alpha", cfg.lora_alpha > 0),
                      ("max_length", cfg.max_length > 1),
                      ("warmup", 0 <= cfg.warmup < 1), ("weight_decay", 0 <= cfg.weight_decay < math.inf),
                      ("max_grad_norm", 0 <= cfg.max_grad_norm < math.inf), ("eval_prompts", cfg.eval_prompts >= 0),
                      ("log_every", cfg.log_every > 0), ("save_every", cfg.save_every >= 0),
                      ("keep_checkpoints", cfg.keep_checkpoints > 0), ("max_bad_steps", cfg.max_bad_steps > 0),
                      ("solve_per", cfg.solve_per in SOLVE_PER), ("gram_layers", cfg.gram_layers >= 0),
                      ("backward", cfg.backward in ("per_objective", "shared")),
                      ("dtype", cfg.dtype in ("float32", "bfloat16")), ("seed", 0 <= cfg.seed < SEED_LIMIT),
                      ("threads", cfg.threads >= 0)])
    if not 0 < cfg.max_prompt_length < cfg.max_length:
        raise UsageError(f"--max-prompt-length: {cfg.max_prompt_length}, but a prompt must keep at least one token and "
                         f"leave one to the response within --max-length {cfg.max_length}")
    if cfg.lr * cfg.weight_decay >= 1:  # AdamW multiplies every weight by 1 - lr x weight_decay before each step
        raise UsageError(f"--weight-decay: {cfg.weight_decay:g} with --lr {cfg.lr:g} multiplies every weight by "
                         f"1 - lr x weight_decay = {1 - cfg.lr * cfg.weight_decay:.3g} at each step; expected "
                         "lr x weight_decay < 1")
    if cfg.fsdp and not launched_by_torchrun():
        raise UsageError("--fsdp: invalid value True (launch with torchrun)")
    if cfg.fsdp and (cfg.lora_r > 0 or cfg.gram_layers > 0):
        raise UsageError("--fsdp: not with --lora-r or --gram-layers (LoRA's adapters need no sharding)")
    if cfg.gram_layers > 0 and cfg.backward == "shared":
        raise UsageError("--backward shared: not with --gram-layers, whose subset Gram matrix has a backward of its "
                         "own")
    if cfg.gram_layers > 0 and cfg.grad_accum > 1 and cfg.solve_per == "step":
        raise UsageError("--gram-layers: solves per micro-batch; with --grad-accum > 1 pass --solve-per micro_batch")
    pick_device(cfg.device)  # a bad or unavailable --device fails here, before anything is loaded


def load_training_pairs(cfg, tokenizer, run):
    """The pairs, their objectives' names and the weights on them (on the simplex); the world's default objectives
    are quality and conciseness. Fails on what would break later (text the tokenizer cannot take or mostly does not
    know, an empty prompt that a tokenizer without BOS leaves with nothing to predict from, fewer pairs than one
    batch: check_tokens) and warns about what teaches nothing (identical responses, an objective whose labels are
    all ties)."""
    wanted = [x for x in cfg.objectives.split(",") if x] or None
    pairs, names = load_pairs(cfg.data, cfg.data_format, wanted, tokenizer, split=cfg.split)
    if wanted is None and tuple(names) == world.OBJECTIVES and world.is_world_prompt(pairs[0].prompt):
        pairs, names = [dataclasses.replace(p, signs=p.signs[:2]) for p in pairs], list(world.OBJECTIVES[:2])
    check_tokens(cfg, pairs, tokenizer, run)
    identical = [p.where for p in pairs if p.response_a == p.response_b]
    if identical and run.main_process:
        print(f"warning: {len(identical)} of {len(pairs)} pairs have identical responses and teach nothing "
              f"(first: {identical[0]})", file=sys.stderr)
    for i, name in enumerate(names):
        if run.main_process and all(p.signs[i] == 0 for p in pairs):
            print(f"warning: objective {name!r} is a tie on every pair: its loss is constant and its gradient zero",
                  file=sys.stderr)
    weights = parse_weights(cfg.weights, len(names))
    if len(pairs) < cfg.batch_size * run.world_size:
        raise UsageError(f"--data: {len(pairs)} pairs, fewer than one batch of {cfg.batch_size * run.world_size}")
    return pairs, names, weights


def check_tokens(cfg, pairs, tokenizer, run, chunk=1024):
    """Every prompt and response goes through the tokenizer now, before anything is written, rather than in the
    middle of training: what it cannot take is one line naming the pair. Text the tokenizer does not know becomes its
    unknown token: a warning when some of the data is, a refusal when much is (English pairs on the embedded world's
    word-level tokenizer, say), unless --allow-unknown-tokens."""
    unknown, total, bos = 0, 0, adds_bos(tokenizer)
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        for field in ("prompt", "response_a", "response_b"):
            try:
                rows = tokenizer([getattr(p, field) for p in part], add_special_tokens=False)["input_ids"]
            except Exception as error:  # a tokenizer's own error types vary; the pair at fault is found one by one
                for pair in part:
                    try:
                        tokenizer(getattr(pair, field), add_special_tokens=False)
                    except Exception:
                        raise DataError(f"{pair.where}: the tokenizer cannot read field '{field}' "
                                        f"({type(error).__name__}: {first_line(error)})") from None
                raise
            for pair, row in zip(part, rows):
                if field == "prompt" and not row and not bos:
                    raise DataError(f"{pair.where}: empty prompt, and the tokenizer adds no BOS: the first response "
                                    "token would have nothing to be predicted from")
            total += sum(len(row) for row in rows)
            unknown += sum(token == tokenizer.unk_token_id for row in rows for token in row)
    share = unknown / max(total, 1)
    if share > UNKNOWN_REFUSED and not cfg.allow_unknown_tokens:
        raise UsageError(f"--data: {share:.0%} of its tokens are unknown to the tokenizer of {cfg.model} "
                         f"({tokenizer.unk_token}): the model would learn from placeholders; pass a --model whose "
                         "tokenizer knows this text, or --allow-unknown-tokens to train anyway")
    if share > UNKNOWN_WARNED and run.main_process:
        print(f"warning: {share:.1%} of the data's tokens are unknown to the tokenizer of {cfg.model} "
              f"({tokenizer.unk_token})", file=sys.stderr)


def check_model(cfg, policy):
    """What the loaded model must allow: as many transformer blocks as --gram-layers asks for."""
    if cfg.gram_layers > len(transformer_blocks(policy)):
        raise UsageError(f"--gram-layers: {cfg.gram_layers}, but the model has {len(transformer_blocks(policy))} "
                         "transformer blocks")
