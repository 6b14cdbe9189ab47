"""Preference pairs into model batches: tokenised so that one forward pass scores both responses of every pair.

The DPO loss (dpo.py) needs log pi(y|x) of both responses of a pair under the policy and the reference. Here the
pairs become that input: rows 0..B-1 hold prompt + y_a, rows B..2B-1 prompt + y_b, with a mask of the response
tokens (the only ones that count), and the endless stream of micro-batches train.py draws from.
"""
import random
from contextlib import nullcontext

import torch

import dpo


def adds_bos(tokenizer):
    """True if the tokenizer puts its BOS in front of text by itself (Llama, Gemma do; Qwen has no BOS).

    Probed rather than read from a flag, because tokenizers built from a post-processor do not set one."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def prompt_ids(tokenizer, prompts):
    """Token ids of rendered prompts as the model is conditioned on them: no special tokens, but the tokenizer's BOS
    in front if it normally adds one and the prompt does not already start with it (a rendered chat template often
    holds it as text). Shared by training (tokenize_pairs) and sampling (policy.sample), so both see the same tokens."""
    bos = tokenizer.bos_token_id
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    if adds_bos(tokenizer):
        rows = [row if row[:1] == [bos] else [bos] + row for row in rows]
    return rows


def truncate_prompt(ids, max_prompt_length, bos):
    """Keep the END of a too-long prompt (the question sits next to the answer, boilerplate in front), and its BOS."""
    if len(ids) <= max_prompt_length:
        return ids
    keep = ids[:1] if ids[:1] == [bos] else []
    return keep + ids[len(ids) - max_prompt_length + len(keep):]


def tokenize_pairs(tokenizer, prompts, responses_a, responses_b, max_length=512, max_prompt_length=384):
    """Tokenize B pairs for ONE forward pass: rows 0..B-1 are prompt+y_a, rows B..2B-1 are prompt+y_b.

    prompts, responses_*: lists of B already-rendered strings (chat templates are applied elsewhere).
    Prompt: tokenized without special tokens; the tokenizer's BOS is put in front if it normally adds one and the
    rendered prompt does not already start with it (a rendered chat template often contains it as text).
    Response: no special tokens, then eos_token_id, so the model is also trained to stop.
    Truncation, decided per pair with the longer response so that y_a and y_b see the SAME prompt:
    if prompt + response > max_length, keep the last max_prompt_length prompt tokens (the BOS survives),
    then cut the end of each response to fit max_length. As max_prompt_length < max_length, a response
    keeps at least one token.
    Returns input_ids (2B, T) long, attention_mask (2B, T) long, completion_mask (2B, T) long
    (1 exactly on response tokens incl. EOS), num_truncated (int: sequences that lost any token).
    """
    if not max_prompt_length < max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length}), "
                         "otherwise a long prompt leaves no room for the response")
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"got {len(prompts)} prompts, {len(responses_a)} responses_a, {len(responses_b)} responses_b")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def ids(texts):
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    rows_a, rows_b, num_truncated = [], [], 0
    for prompt, resp_a, resp_b in zip(prompt_ids(tokenizer, prompts), ids(responses_a), ids(responses_b)):
        if not prompt:  # the first response token would have no position to be predicted from
            raise ValueError("empty prompt and no BOS: the first response token cannot be scored")
        resp_a, resp_b = resp_a + [eos], resp_b + [eos]
        prompt_cut = False
        if len(prompt) + max(len(resp_a), len(resp_b)) > max_length and len(prompt) > max_prompt_length:
            prompt, prompt_cut = truncate_prompt(prompt, max_prompt_length, bos), True
        budget = max_length - len(prompt)  # > 0: the prompt is at most max_prompt_length < max_length here
        for resp, rows in ((resp_a, rows_a), (resp_b, rows_b)):
            num_truncated += int(prompt_cut or len(resp) > budget)
            rows.append((prompt, resp[:budget]))

    rows = rows_a + rows_b
    T = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)  # right padding
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for n, (prompt, resp) in enumerate(rows):
        P, L = len(prompt), len(resp)
        input_ids[n, :P + L] = torch.tensor(prompt + resp)
        attention_mask[n, :P + L] = 1
        completion_mask[n, P:P + L] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask,
                num_truncated=num_truncated)


def batches(num_pairs, batch_size, seed, rank=0, world_size=1):
    """Endless micro-batches of pair indices: a fresh shuffle each epoch, each process taking its own slice."""
    rng = random.Random(seed)
    while True:
        order = list(range(num_pairs))
        rng.shuffle(order)
        order = order[rank::world_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def collate(pairs, tokenizer, max_length, max_prompt_length, device, indices=None):
    """A micro-batch for one forward pass (tokenize_pairs' tensors on device), with the labels signs (B, m) and the
    pairs' indices in the data (for a reference whose log-probs were computed once, harness/reference.py)."""
    tokens = tokenize_pairs(tokenizer, [p.prompt for p in pairs], [p.response_a for p in pairs],
                            [p.response_b for p in pairs], max_length, max_prompt_length)
    batch = {k: v.to(device) for k, v in tokens.items() if torch.is_tensor(v)}
    batch["signs"] = torch.tensor([p.signs for p in pairs], dtype=torch.float32, device=device)
    batch["indices"] = indices
    return batch


def autocast(device, bf16):
    """bf16 autocast over float32 master weights when asked (no fp16 loss scaling), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def pair_logps(model, tokenizer, pairs, max_length, max_prompt_length, device, bf16=False):
    """Summed response log-probs of y_a and y_b for a list of pairs, in one forward pass (dpo.completion_logps).
    Returns logps_a, logps_b, each (B,)."""
    batch = collate(pairs, tokenizer, max_length, max_prompt_length, device)
    with autocast(device, bf16):
        return dpo.completion_logps(model, batch)[0].chunk(2)
