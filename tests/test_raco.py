"""raco.py on a tiny causal LM: the direction in .grad against flat gradients and finite differences."""

import pytest
import torch

from cagrad import coefficients
from raco import MultiObjectiveBackward, gram
from tiny import tiny_llama

WEIGHTS = [0.3, 0.7]


def tiny_model(seed=0):
    # no pad token: nn.Embedding zeroes the gradient of the padding row, which finite differences would see
    return tiny_llama(seed, vocab_size=40, num_hidden_layers=2, pad_token_id=None).double()


def batch(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (3, 10), generator=generator)


def losses(model, input_ids):
    """Two objectives that pull the same logits different ways: predict the next token, or token 7 everywhere."""
    logits = model(input_ids=input_ids).logits[:, :-1]
    next_token = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), input_ids[:, 1:].reshape(-1))
    always_seven = -logits.log_softmax(-1)[..., 7].mean()
    return torch.stack([next_token, always_seven])


def flat_gradients(model, input_ids):
    """Independent reference: one backward per loss, every gradient flattened into one vector: (m, n)."""
    rows = []
    for i in range(2):
        model.zero_grad()
        losses(model, input_ids)[i].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


def grad_vector(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("method", ["raco", "cagrad", "lw", "mgda", "pcgrad"])
def test_direction_equals_flat_gradient_computation(method):
    model, ids = tiny_model(), batch(0)
    F = flat_gradients(model, ids)
    a_flat, _ = coefficients(F @ F.T, WEIGHTS, method, c=0.4)
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, method, c=0.4, names=["next", "seven"])
    step.backward(losses(model, ids), diagnostics=True)
    diagnostics = step.finish()
    assert torch.allclose(torch.tensor([diagnostics["a/next"], diagnostics["a/seven"]], dtype=torch.float64),
                          a_flat, rtol=1e-10)
    assert torch.allclose(grad_vector(model), a_flat @ F, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("diagnostics, passes", [(False, 1), (True, 2)])
def test_loss_weighting_takes_one_backward_pass_unless_diagnostics_are_asked_for(diagnostics, passes):
    model, ids = tiny_model(), [batch(10), batch(11)]
    F = (flat_gradients(model, ids[0]) + flat_gradients(model, ids[1])) / 2
    step, counted = MultiObjectiveBackward(model.parameters(), WEIGHTS, "lw"), []
    for x in ids:
        objective_losses = losses(model, x)
        objective_losses.register_hook(lambda grad: counted.append(1))  # once per backward pass through the losses
        step.backward(objective_losses, diagnostics=diagnostics)
    logged = step.finish()
    assert len(counted) == 2 * passes and (step.buffers is None) == (not diagnostics)
    # one pass of the weighted loss rounds differently (the model's rotary tables are float32): 1e-6, not 1e-9
    expected = torch.tensor(WEIGHTS, dtype=torch.float64) @ F
    assert (grad_vector(model) - expected).norm() < 1e-6 * expected.norm()
    assert ("grad_norm/0" in logged) == diagnostics


def test_gram_in_blocks_matches_flat_inner_products():
    F = flat_gradients(tiny_model(), batch(1))
    for chunk in (7, 1000, 1 << 22):  # blocks that do not divide n, and one block for all
        assert torch.allclose(gram(F, chunk), F @ F.T, rtol=1e-12)
    F32 = F.float()  # float32 gradients: the products are taken in float64, block by block
    assert torch.allclose(gram(F32, 7), F32.double() @ F32.double().T, rtol=1e-14)


def test_direction_matches_finite_differences():
    model, ids = tiny_model(), batch(2)
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco", c=0.6)
    step.backward(losses(model, ids))
    diagnostics = step.finish()
    a = torch.tensor([diagnostics["a/0"], diagnostics["a/1"]], dtype=torch.float64)
    d = grad_vector(model)
    torch.manual_seed(5)
    v = torch.randn_like(d)
    v /= v.norm()
    params = list(model.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def losses_at(x):
        torch.nn.utils.vector_to_parameters(x, params)
        with torch.no_grad():
            return losses(model, ids)

    eps = 1e-3  # central differences: O(eps^2) truncation; smaller eps meets float32 parts of the model's forward
    directional = (losses_at(theta + eps * v) - losses_at(theta - eps * v)) / (2 * eps)  # <g_i, v> for each i
    torch.nn.utils.vector_to_parameters(theta, params)
    assert torch.dot(d, v).item() == pytest.approx((a @ directional).item(), rel=1e-4)
    assert abs(torch.dot(d, v).item() - (torch.tensor(WEIGHTS, dtype=torch.float64) @ directional).item()) > 1e-3


def test_accumulate_gradients_then_solve_once():
    model, ids = tiny_model(), [batch(10), batch(11)]
    F = (flat_gradients(model, ids[0]) + flat_gradients(model, ids[1])) / 2
    a, _ = coefficients(F @ F.T, WEIGHTS, "raco")
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco", solve_per="step")
    for x in ids:
        step.backward(losses(model, x))
    step.finish()
    assert torch.allclose(grad_vector(model), a @ F, rtol=1e-9, atol=1e-14)


def test_solve_per_micro_batch_averages_directions():
    model, ids = tiny_model(), [batch(10), batch(11)]
    expected = 0
    for x in ids:
        F = flat_gradients(model, x)
        expected = expected + coefficients(F @ F.T, WEIGHTS, "raco")[0] @ F / 2
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco", solve_per="micro_batch")
    for x in ids:
        step.backward(losses(model, x))
    step.finish()
    assert torch.allclose(grad_vector(model), expected, rtol=1e-9, atol=1e-14)
    # and the two modes genuinely differ with two micro-batches, so the switch matters
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco", solve_per="step")
    for x in ids:
        step.backward(losses(model, x))
    step.finish()
    assert not torch.allclose(grad_vector(model), expected, rtol=1e-6)


def test_frozen_and_unused_parameters():
    model, ids = tiny_model(), batch(3)
    model.model.embed_tokens.weight.requires_grad_(False)
    extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))  # reached by no loss
    step = MultiObjectiveBackward(list(model.parameters()) + [extra], WEIGHTS, "raco")
    step.backward(losses(model, ids))
    step.finish()
    assert model.model.embed_tokens.weight.grad is None
    assert torch.equal(extra.grad, torch.zeros(3, dtype=torch.float64))


def test_an_optimizer_steps_on_the_direction():
    model, ids = tiny_model(), batch(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = (torch.tensor(WEIGHTS, dtype=torch.float64) @ losses(model, ids)).item()
    for _ in range(5):
        step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco")
        step.backward(losses(model, ids))
        step.finish()
        optimizer.step()
    assert (torch.tensor(WEIGHTS, dtype=torch.float64) @ losses(model, ids)).item() < before


def test_bad_use_is_reported():
    model, ids = tiny_model(), batch(0)
    with pytest.raises(ValueError, match="solve_per"):
        MultiObjectiveBackward(model.parameters(), WEIGHTS, solve_per="epoch")
    step = MultiObjectiveBackward(model.parameters(), [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="3 weights"):
        step.backward(losses(model, ids))
    with pytest.raises(RuntimeError, match="before any backward"):
        step.finish()


def test_subset_gram_solves_on_the_last_block_then_steps_on_every_parameter():
    model, ids = tiny_model(), batch(6)
    F = flat_gradients(model, ids)
    params = list(model.parameters())
    last_block = {id(p) for p in model.model.layers[-1].parameters()}
    in_block = torch.cat([torch.full((p.numel(),), id(p) in last_block) for p in params])
    F_block = F[:, in_block]  # the same gradients, restricted to the last block's coordinates
    a_block, _ = coefficients(F_block @ F_block.T, WEIGHTS, "raco")
    a_full, _ = coefficients(F @ F.T, WEIGHTS, "raco")
    assert not torch.allclose(a_block, a_full, rtol=1e-3)  # the approximation is a different solve
    step = MultiObjectiveBackward(params, WEIGHTS, "raco", gram_params=list(model.model.layers[-1].parameters()))
    step.backward(losses(model, ids))
    logged = step.finish()
    assert torch.allclose(torch.tensor([logged["a/0"], logged["a/1"]], dtype=torch.float64), a_block, rtol=1e-10)
    expected = a_block @ F  # one full backward of a^T L (rounded differently from two: float32 rotary tables)
    assert (grad_vector(model) - expected).norm() < 1e-6 * expected.norm()
