"""Tests for dpo.py: each claim is checked against an independent computation (by hand, naive log-softmax,
or the model run token by token), so a wrong shift, mask or sign makes a test fail."""
import math

import pytest
import torch

from dpo import amopo_margin, completion_logps, dpo_losses, dpo_metrics, log_ratio_margin, sequence_logps
from harness.batches import tokenize_pairs
from tiny import tiny_llama, word_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      initializer_range=0.2, attn_implementation="eager").eval()


PROMPTS = ["why is the cat fast", "how"]
RESP_A = ["the cat is very fast", "yes"]
RESP_B = ["no", "it is a good long answer on a mat"]


# ----------------------------------------------------------------------------- the loss

def test_dpo_loss_at_hand_worked_values():
    delta = torch.tensor([1.0, -2.0], requires_grad=True)
    signs = torch.tensor([[1, -1], [0, 1]])
    beta, B = 0.5, 2
    softplus = lambda x: math.log(1 + math.exp(-x))  # -log sigmoid(x)
    expected = [(softplus(0.5 * 1.0) + math.log(2)) / 2,  # objective 0: a wins, then a tie
                (softplus(-0.5 * 1.0) + softplus(0.5 * -2.0)) / 2]  # objective 1: b wins, then a wins
    losses = dpo_losses(delta, signs, beta)
    assert losses.shape == (2,)
    assert torch.allclose(losses, torch.tensor(expected), atol=1e-6)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    for i in range(2):
        (grad,) = torch.autograd.grad(losses[i], delta, retain_graph=True)
        analytic = [-beta * s * sigmoid(-beta * s * d) / B for s, d in zip(signs[:, i].tolist(), [1.0, -2.0])]
        assert torch.allclose(grad, torch.tensor(analytic), atol=1e-6)
    assert grad.tolist()[0] != 0 and torch.autograd.grad(losses[0], delta)[0][1] == 0  # the tie has no gradient


def test_dpo_loss_is_finite_for_huge_margins():
    losses = dpo_losses(torch.tensor([1e4]), torch.tensor([[1, -1]]), beta=0.1)
    assert torch.isfinite(losses).all()
    assert losses[0] < 1e-6 and abs(losses[1].item() - 1e3) < 1e-2  # -log sigmoid(-x) ~ x


def test_dpo_losses_rejects_bad_shapes():
    with pytest.raises(ValueError, match="signs"):
        dpo_losses(torch.zeros(3), torch.zeros(2, 2), beta=0.1)
    with pytest.raises(ValueError):
        dpo_losses(torch.zeros(3), torch.zeros(3), beta=0.1)


def test_log_ratio_margin_and_amopo_margin_by_hand():
    pa, pb, ra, rb = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5])
    assert log_ratio_margin(pa, pb, ra, rb).item() == pytest.approx((-3 + 5) - (-4 + 4.5))
    margin = amopo_margin(torch.tensor([-6.0, -2.0]), torch.tensor([-9.0, -8.0]),
                          torch.tensor([3, 1]), torch.tensor([2, 4]))
    assert torch.allclose(margin, torch.tensor([-6 / 3 + 9 / 2, -2 / 1 + 8 / 4]))


# ----------------------------------------------------------------------------- log-probs

def naive_logps(logits, input_ids, completion_mask):
    token = torch.log_softmax(logits.float()[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token * completion_mask[:, 1:]).sum(-1)


def test_sequence_logps_matches_full_log_softmax():
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 9, 50)).requires_grad_()
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.zeros(3, 9, dtype=torch.long)
    mask[0, 4:], mask[1, 2:6], mask[2, 8] = 1, 1, 1
    logps, lengths = sequence_logps(logits, ids, mask)
    reference = naive_logps(logits, ids, mask)
    assert lengths.tolist() == [5, 4, 1]
    assert torch.allclose(logps, reference, atol=1e-5)
    # the chunked/checkpointed logsumexp must give the same gradient too
    (grad,) = torch.autograd.grad(logps.sum(), logits)
    (grad_ref,) = torch.autograd.grad(reference.sum(), logits)
    assert torch.allclose(grad, grad_ref, atol=1e-6)

    low = logits.detach().bfloat16()
    logps_low, _ = sequence_logps(low, ids, mask)
    assert logps_low.dtype == torch.float32
    assert torch.allclose(logps_low, naive_logps(low.float(), ids, mask), atol=1e-4)  # exact w.r.t. the bf16 values
    assert torch.allclose(logps_low, reference, atol=0.1 * mask.sum(-1).max().item())  # and near the fp32 ones


def test_lengths_count_the_predicted_response_tokens():
    torch.manual_seed(1)
    logits, ids = torch.randn(2, 6, 20), torch.randint(0, 20, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    assert sequence_logps(logits, ids, mask)[1].tolist() == [3, 5]

# ----------------------------------------------------------------------------- the model on stacked pairs

def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_one_forward_stacks_a_then_b(tokenizer, model):
    batch = tokenize_pairs(tokenizer, PROMPTS, RESP_A, RESP_B)
    assert batch["input_ids"].shape[0] == 4 and batch["num_truncated"] == 0
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for row, (p, r) in enumerate([(p, a) for p, a in zip(PROMPTS, RESP_A)] + [(p, b) for p, b in zip(PROMPTS, RESP_B)]):
        expected = [bos] + ids_of(tokenizer, p) + ids_of(tokenizer, r) + [eos]
        n = batch["attention_mask"][row].sum().item()
        assert batch["input_ids"][row, :n].tolist() == expected
    # swapping y_a and y_b must swap the outputs: catches a mix-up of halves in completion_logps
    with torch.no_grad():
        (la, lb), (na, nb) = (x.chunk(2) for x in completion_logps(model, batch))
        sa, sb = completion_logps(model, tokenize_pairs(tokenizer, PROMPTS, RESP_B, RESP_A))[0].chunk(2)
    assert torch.allclose(la, sb, atol=1e-5) and torch.allclose(lb, sa, atol=1e-5)
    assert not torch.allclose(la, lb)
    assert na.tolist() == [6, 2] and nb.tolist() == [2, 10]  # words + EOS

def test_prompt_tokens_do_not_count(tokenizer, model):
    batch = tokenize_pairs(tokenizer, PROMPTS, RESP_A, RESP_B)
    prompt_lengths = [1 + len(ids_of(tokenizer, p)) for p in PROMPTS] * 2
    for row, P in enumerate(prompt_lengths):
        assert batch["completion_mask"][row, :P].sum() == 0 and batch["completion_mask"][row, P] == 1
    with torch.no_grad():
        logps, _ = completion_logps(model, batch)  # rows: y_a of each pair, then y_b
        # independent: run the model on each unpadded prefix and score the next token, response positions only
        for row, P in enumerate(prompt_lengths):
            n = batch["attention_mask"][row].sum().item()
            ids = batch["input_ids"][row, :n]
            expected = sum(torch.log_softmax(model(input_ids=ids[None, :t]).logits[0, -1], -1)[ids[t]].item()
                           for t in range(P, n))
            assert logps[row].item() == pytest.approx(expected, abs=1e-4)


def test_padding_does_not_count(tokenizer, model):
    batch = tokenize_pairs(tokenizer, PROMPTS, RESP_A, RESP_B)
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["completion_mask"][padding] == 0).all()
    with torch.no_grad():
        before = completion_logps(model, batch)[0]
        scrambled = dict(batch, input_ids=batch["input_ids"].clone())
        scrambled["input_ids"][padding] = torch.randint(4, 40, (int(padding.sum()),))
        after = completion_logps(model, scrambled)[0]
        assert torch.allclose(before, after, atol=1e-6)
        # a pair scored alone (no padding at all) gives the same numbers as inside the padded batch
        for i in range(2):
            alone = completion_logps(model, tokenize_pairs(tokenizer, PROMPTS[i:i + 1], RESP_A[i:i + 1],
                                                           RESP_B[i:i + 1]))[0]
            assert torch.allclose(alone, before[[i, 2 + i]], atol=1e-5)

# ----------------------------------------------------------------------------- metrics

def test_dpo_metrics_by_hand():
    pa, pb = torch.tensor([-1.0, -4.0, -2.0]), torch.tensor([-3.0, -1.0, -2.0])
    ra, rb = torch.tensor([-2.0, -2.0, -2.0]), torch.tensor([-2.0, -2.0, -2.0])
    signs = torch.tensor([[1, -1], [1, 0], [0, 1]])
    m = dpo_metrics(pa, pb, ra, rb, signs, beta=0.5, names=["help", "safe"])
    # rewards: r_a = [0.5, -1, 0], r_b = [-0.5, 0.5, 0]
    # help: pairs 0, 1 with a chosen -> chosen [0.5, -1], rejected [-0.5, 0.5]
    assert m["help/pairs"] == 2
    assert m["help/rewards/chosen"] == pytest.approx(-0.25) and m["help/rewards/rejected"] == pytest.approx(0.0)
    assert m["help/rewards/accuracies"] == pytest.approx(0.5) and m["help/rewards/margins"] == pytest.approx(-0.25)
    assert m["help/logps/chosen"] == pytest.approx(-2.5) and m["help/logps/rejected"] == pytest.approx(-2.0)
    # safe: pair 0 b chosen, pair 2 a chosen (an exact tie of rewards: not an accurate pair)
    assert m["safe/pairs"] == 2
    assert m["safe/rewards/chosen"] == pytest.approx((-0.5 + 0.0) / 2)
    assert m["safe/rewards/rejected"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["safe/rewards/accuracies"] == 0.0
    assert m["safe/logps/chosen"] == pytest.approx((-3 - 2) / 2) and m["safe/logps/rejected"] == pytest.approx(-1.5)
    assert all(isinstance(v, float) for v in m.values())


def test_dpo_metrics_all_ties_omits_averages():
    z = torch.zeros(2)
    m = dpo_metrics(z, z, z, z, torch.tensor([[0, 1], [0, -1]]), beta=0.1, names=["a", "b"])
    assert m["a/pairs"] == 0 and "a/rewards/accuracies" not in m and "b/rewards/accuracies" in m
    assert all(math.isfinite(v) for v in m.values())
