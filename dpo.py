"""Log-probabilities and per-objective DPO losses for RACO (SPEC section 1).

One preference pair (x, y_a, y_b) serves all m objectives; objective i only contributes its own label
s_i in {+1, -1, 0}. So the model runs once over both responses, we get one log-ratio margin Delta per pair,
and every objective's loss is a function of (Delta, s_i):

    Delta = [log pi(y_a|x) - log pi(y_b|x)] - [log pi_ref(y_a|x) - log pi_ref(y_b|x)]
    L_i   = -(1/B) sum_b log sigmoid(beta * s_i,b * Delta_b)

log pi(y|x) is the SUM of the response-token log-probs; prompt and padding tokens are masked out.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ----------------------------------------------------------------------------- tokenization

def _adds_bos(tokenizer):
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
    if _adds_bos(tokenizer):
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


# ----------------------------------------------------------------------------- log-probs

def _logsumexp_float32(logits_row):
    """(T, V) logits of any dtype -> (T,) float32 logsumexp; the float32 copy lives only inside this call."""
    return torch.logsumexp(logits_row.float(), dim=-1)


def sequence_logps(logits, input_ids, completion_mask):
    """Sum of completion-token log-probs: log pi(y|x) = sum_t mask_t * log p(token_t | tokens_<t).

    logits: (N, T, V) (bf16 or fp32), input_ids: (N, T), completion_mask: (N, T) with 1 on response tokens.
    Returns logps (N,) float32 and lengths (N,) = number of response tokens (for a length-normalised margin).
    Memory: log p = logit[label] - logsumexp(logits). The label logit is a gather (no copy of V); the logsumexp is
    taken in float32 one sequence at a time, so the float32 peak is one (T, V) slice instead of the whole
    (N, T, V) log-softmax, which dominates memory with a 150k vocabulary. Under autograd each slice is
    recomputed in backward (checkpoint) so the saved float32 slices do not pile up either.
    """
    # Explicit shift: the logit at position t predicts token t+1; the mask follows the predicted token.
    logits, labels = logits[:, :-1], input_ids[:, 1:]
    mask = completion_mask[:, 1:].bool()
    label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()  # (N, T-1)
    if torch.is_grad_enabled() and logits.requires_grad:
        lse = [checkpoint(_logsumexp_float32, row, use_reentrant=False) for row in logits]
    else:
        lse = [_logsumexp_float32(row) for row in logits]
    token_logps = label_logits - torch.stack(lse)  # (N, T-1)
    # where, not multiply: a masked position can never leak a nan/inf into the sum.
    logps = torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)
    return logps, mask.sum(-1)


def completion_logps(model, batch):
    """One forward over the stacked batch of tokenize_pairs (rows 0..B-1 = y_a, B..2B-1 = y_b).

    Returns logps_a (B,), logps_b (B,), lengths_a (B,), lengths_b (B,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, lengths = sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
    B = logps.shape[0] // 2
    return logps[:B], logps[B:], lengths[:B], lengths[B:]


def pair_logps(model, tokenizer, pairs, max_length, max_prompt_length, device, bf16=False):
    """Summed response log-probs of y_a and y_b for a list of pairs (objects with .prompt, .response_a,
    .response_b), tokenized by tokenize_pairs and run in one forward pass, under bf16 autocast if asked.
    Returns logps_a, logps_b, lengths_a, lengths_b, each (B,)."""
    tokens = tokenize_pairs(tokenizer, [p.prompt for p in pairs], [p.response_a for p in pairs],
                            [p.response_b for p in pairs], max_length, max_prompt_length)
    tokens = {k: v.to(device) for k, v in tokens.items() if torch.is_tensor(v)}
    with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        return completion_logps(model, tokens)


@torch.no_grad()
def reference_logps(model, tokenizer, pairs, batch_size, max_length, max_prompt_length, device, bf16=False, rank=0,
                    world_size=1):
    """log pi_ref(y_a|x) and log pi_ref(y_b|x) of every pair, computed once in batches: (2, N) float32.

    Under torchrun each process computes an equal share (FSDP's forward is collective, so every process must run
    as many forwards) and all gather the rest."""
    import torch.distributed as dist
    from tqdm import tqdm
    share = list(range(rank, len(pairs), world_size))
    share += share[-1:] * (-(-len(pairs) // world_size) - len(share))  # pad to the same length on every process
    out = []
    for start in tqdm(range(0, len(share), batch_size), desc="reference log-probs", disable=rank != 0):
        batch = [pairs[i] for i in share[start:start + batch_size]]
        out.append(torch.stack(pair_logps(model, tokenizer, batch, max_length, max_prompt_length, device, bf16)[:2]))
    mine = torch.cat(out, 1).float()
    if world_size == 1:
        return mine
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    every = torch.empty(2, len(pairs), device=mine.device)
    for r, part in enumerate(gathered):
        indices = list(range(r, len(pairs), world_size))
        every[:, indices] = part[:, :len(indices)]
    return every


# ----------------------------------------------------------------------------- losses

def log_ratio_margin(policy_a, policy_b, ref_a, ref_b):
    """Delta = [log pi(y_a) - log pi(y_b)] - [log pi_ref(y_a) - log pi_ref(y_b)]; all inputs (B,), returns (B,)."""
    return (policy_a - policy_b) - (ref_a - ref_b)


def dpo_losses(delta, signs, beta):
    """Per-objective DPO losses L_i = -(1/B) sum_b log sigmoid(beta * s_i,b * Delta_b).

    delta: (B,) log-ratio margins of the ordered pairs (y_a vs y_b); signs: (B, m) in {+1, -1, 0}.
    Returns (m,). A tie (s = 0) contributes log sigmoid(0) = -log 2 with zero gradient, but still counts in B.
    F.logsigmoid is stable for large |beta * Delta| where log(sigmoid(.)) would underflow to -inf.
    """
    if delta.dim() != 1 or signs.dim() != 2 or signs.shape[0] != delta.shape[0]:
        raise ValueError(f"expected delta (B,) and signs (B, m), got {tuple(delta.shape)} and {tuple(signs.shape)}")
    signs = signs.to(delta.dtype)
    return -F.logsigmoid(beta * signs * delta.unsqueeze(1)).mean(dim=0)


def amopo_margin(policy_a, policy_b, lengths_a, lengths_b):
    """AMoPO's margin (SPEC section 5): reference-free and length-normalised, log pi(y_a)/|y_a| - log pi(y_b)/|y_b|.

    policy_*: (B,) summed log-probs, lengths_*: (B,) response lengths; returns (B,).
    Per-objective AMoPO losses are dpo_losses(amopo_margin(...), signs, beta), i.e.
    -mean_b log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l)), and sum_k w_k L_k is AMoPO's loss.
    """
    return policy_a / lengths_a - policy_b / lengths_b


@torch.no_grad()
def dpo_metrics(policy_a, policy_b, ref_a, ref_b, signs, beta, names):
    """TRL-style DPO metrics per objective, as python floats keyed f"{name}/...".

    policy_*, ref_*: (B,) summed log-probs; signs: (B, m); names: m objective names.
    Implicit reward r(y) = beta * (log pi(y) - log pi_ref(y)). For objective i the chosen response is y_a where
    s_i = +1 and y_b where s_i = -1; ties are left out of the averages. "{name}/pairs" is the number of non-tie
    pairs; when it is 0 the other keys for that objective are OMITTED (a 0.0 would drag running averages and
    read as a real accuracy of 0%).
    """
    if signs.dim() != 2 or signs.shape[1] != len(names):
        raise ValueError(f"signs {tuple(signs.shape)} does not match {len(names)} objective names")
    reward_a, reward_b = beta * (policy_a - ref_a), beta * (policy_b - ref_b)
    metrics = {}
    for i, name in enumerate(names):
        s = signs[:, i]
        a_wins, decided = s > 0, s != 0
        metrics[f"{name}/pairs"] = float(decided.sum())
        if not decided.any():
            continue
        chosen = torch.where(a_wins, reward_a, reward_b)[decided]
        rejected = torch.where(a_wins, reward_b, reward_a)[decided]
        metrics[f"{name}/rewards/chosen"] = chosen.mean().item()
        metrics[f"{name}/rewards/rejected"] = rejected.mean().item()
        metrics[f"{name}/rewards/accuracies"] = (chosen > rejected).float().mean().item()
        metrics[f"{name}/rewards/margins"] = (chosen - rejected).mean().item()
        metrics[f"{name}/logps/chosen"] = torch.where(a_wins, policy_a, policy_b)[decided].mean().item()
        metrics[f"{name}/logps/rejected"] = torch.where(a_wins, policy_b, policy_a)[decided].mean().item()
    return metrics
