"""Sampling a policy and scoring its samples: the responses, their log-probs, mean scores with standard errors and
KL(policy || reference), and on the embedded world its exact scores (score_on_world). train.py, eval.py and the sweeps
evaluate through here, so a policy is always sampled from the same prompt tokens that training conditions it on
(harness/batches.prompt_ids).
"""
import dataclasses

import torch
from tqdm import tqdm

import dpo
import world
from harness.batches import prompt_ids, truncate_prompt
from harness.metrics import front_gain_2d, kl_estimate, mean_se
from harness.models import eval_mode


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How responses are sampled: num_samples per prompt at a temperature, at most max_new_tokens each, from a seed;
    batch_size prompts per generate call, each kept to its last max_prompt_length tokens (as training keeps it)."""
    num_samples: int = 4
    temperature: float = 0.6
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 32
    max_prompt_length: int = 192


@torch.no_grad()
def sample(model, tokenizer, prompts, how=Sampling()):
    """how.num_samples responses per prompt, generated for batches of left-padded prompts (so every row continues
    from its own last prompt token), each prompt tokenized as training tokenizes it. Returns (texts, batches):
    texts[i] lists prompt i's responses, cut at the first EOS; each batch holds input_ids, attention_mask and
    completion_mask (N, T), the last marking the sampled tokens up to and including the first EOS, for
    sampled_logps. Deterministic in how.seed; the global RNG and the model's mode are left as found."""
    num_samples, temperature, max_new_tokens = how.num_samples, how.temperature, how.max_new_tokens
    seed, batch_size, max_prompt_length = how.seed, how.batch_size, how.max_prompt_length
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, batches = [], []
    with torch.random.fork_rng(devices=[]), eval_mode(model):
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", leave=False, dynamic_ncols=True):
            rows = [truncate_prompt(ids, max_prompt_length, tokenizer.bos_token_id)
                    for ids in prompt_ids(tokenizer, prompts[start:start + batch_size])]
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


def evaluate_samples(policy, tokenizer, prompts, how=Sampling(), score=None, batch_scores=None, reference=None):
    """Mean and standard error ("<key>_se") of every score over how.num_samples responses per prompt, and, given a
    reference, KL(policy || reference). Returns (scores, examples: the first response to each of the first 6
    prompts, with its scores).

    score(prompt, response) -> dict of numbers (the world's exact scorer), or None to report the length in tokens;
    batch_scores: {name: f(prompts, responses) -> list of floats} (reward models), added to each row.
    """
    num_samples = how.num_samples
    texts, batches = sample(policy, tokenizer, prompts, how)
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
        if how.temperature != 1.0:
            at_one = dataclasses.replace(how, temperature=1.0, seed=how.seed + 1)
            _, batches = sample(policy, tokenizer, prompts, at_one)
        scores["kl"], scores["kl_se"] = kl_estimate(sampled_logps(policy, batches, how.batch_size),
                                                    sampled_logps(reference, batches, how.batch_size), num_samples)
    examples = list(zip(flat_prompts, flat, rows))[::num_samples][:6]  # the first sample of each of 6 prompts
    return scores, [{"prompt": p, "response": r, **row} for p, r, row in examples]


def score_on_world(model, tokenizer, names, weights, num_prompts, seed=0, reference=None):
    """On num_prompts of the world's held-out prompts: the mean exact scores of fresh samples (4 per prompt,
    temperature 0.6) with standard errors, the weighted score, KL(model || reference) given one (else 0: the reference
    itself), "to_front": how much more of both names[0] and names[1] the exact front offers (metrics.front_gain_2d),
    and "examples": the first response to each of the first prompts (the same prompts for every model)."""
    prompts = world.eval_prompts(num_prompts)
    scores, examples = evaluate_samples(model, tokenizer, prompts, Sampling(seed=seed), world.score,
                                        reference=reference)
    scores["weighted"] = sum(w * scores[name] for w, name in zip(weights, names))
    scores.setdefault("kl", 0.0)
    if len(names) > 1:
        front = [v[:2] for v in world.exact_front(names[:2], prompts)]
        scores["to_front"] = front_gain_2d((scores[names[0]], scores[names[1]]), front)
    scores["examples"] = [{"prompt": e["prompt"], "response": e["response"]} for e in examples]
    return scores
