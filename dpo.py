"""The per-objective DPO losses of RACO: log-probabilities of responses, the log-ratio margin, one loss per objective.

One preference pair (x, y_a, y_b) serves all m objectives (arXiv 2602.02495, Sec. 3; docs/method.md); objective i
only contributes its own label s_i in {+1, -1, 0} (+1: y_a preferred, -1: y_b, 0: a tie). So the model runs once
over both responses, each pair gets one log-ratio margin Delta, and every objective's loss is a function of
(Delta, s_i) -- the DPO loss of Rafailov et al. 2023 (Eq. 7) with the label choosing which response is "chosen":

    Delta = [log pi(y_a|x) - log pi(y_b|x)] - [log pi_ref(y_a|x) - log pi_ref(y_b|x)]
    L_i   = -(1/B) sum_b log sigmoid(beta * s_i,b * Delta_b)

log pi(y|x) is the SUM of the response-token log-probs; prompt and padding tokens are masked out. The batches come
from harness/batches.py: rows 0..B-1 hold prompt + y_a, rows B..2B-1 prompt + y_b.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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
    """One forward over the stacked batch of tokenize_pairs: log pi(y|x) of every response and its length, each (2B,),
    rows 0..B-1 for y_a and B..2B-1 for y_b (`.chunk(2)` splits them)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["input_ids"], batch["completion_mask"])


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
    """AMoPO's margin: reference-free and length-normalised, log pi(y_a)/|y_a| - log pi(y_b)/|y_b|.

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
