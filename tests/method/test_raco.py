"""raco.py on a tiny causal LM: the direction in .grad against flat gradients computed independently and against
finite differences."""

import pytest
import torch

from cagrad import coefficients
from raco import MultiObjectiveBackward, gram
from tiny import conflicting_losses, conflicting_model, flat_gradients, grad_vector, token_batch

WEIGHTS = [0.3, 0.7]


@pytest.mark.parametrize("method", ["raco", "cagrad", "lw", "mgda", "pcgrad"])
def test_direction_equals_flat_gradient_computation(method):
    model, ids = conflicting_model(), token_batch(0)
    F = flat_gradients(model, ids)
    a_flat, _ = coefficients(F @ F.T, WEIGHTS, method, c=0.4)
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, method, c=0.4, names=["next", "seven"])
    step.backward(*conflicting_losses(model, ids))
    diagnostics = step.finish()
    assert torch.allclose(torch.tensor([diagnostics["a/next"], diagnostics["a/seven"]], dtype=torch.float64),
                          a_flat, rtol=1e-10)
    assert torch.allclose(grad_vector(model), a_flat @ F, rtol=1e-10, atol=1e-14)


def test_gram_in_blocks_matches_flat_inner_products():
    F = flat_gradients(conflicting_model(), token_batch(1))
    for chunk in (7, 1000, 1 << 22):  # blocks that do not divide n, and one block for all
        assert torch.allclose(gram(F, chunk), F @ F.T, rtol=1e-12)
    F32 = F.float()  # float32 gradients: the products are taken in float64, block by block
    assert torch.allclose(gram(F32, 7), F32.double() @ F32.double().T, rtol=1e-14)


def test_direction_matches_finite_differences():
    model, ids = conflicting_model(), token_batch(2)
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco", c=0.6)
    step.backward(*conflicting_losses(model, ids))
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
            return conflicting_losses(model, ids)[0]

    eps = 1e-3  # central differences: O(eps^2) truncation; smaller eps meets float32 parts of the model's forward
    directional = (losses_at(theta + eps * v) - losses_at(theta - eps * v)) / (2 * eps)  # <g_i, v> for each i
    torch.nn.utils.vector_to_parameters(theta, params)
    assert torch.dot(d, v).item() == pytest.approx((a @ directional).item(), rel=1e-4)
    assert abs(torch.dot(d, v).item() - (torch.tensor(WEIGHTS, dtype=torch.float64) @ directional).item()) > 1e-3


def test_accumulate_gradients_then_solve_once():
    model, ids = conflicting_model(), [token_batch(10), token_batch(11)]
    F = (flat_gradients(model, ids[0]) + flat_gradients(model, ids[1])) / 2
    a, _ = coefficients(F @ F.T, WEIGHTS, "raco")
    step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco")
    for x in ids:
        step.backward(*conflicting_losses(model, x))
    step.finish()
    assert torch.allclose(grad_vector(model), a @ F, rtol=1e-9, atol=1e-14)


def test_frozen_and_unused_parameters():
    model, ids = conflicting_model(), token_batch(3)
    model.model.embed_tokens.weight.requires_grad_(False)
    extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))  # reached by no loss
    step = MultiObjectiveBackward(list(model.parameters()) + [extra], WEIGHTS, "raco")
    step.backward(*conflicting_losses(model, ids))
    step.finish()
    assert model.model.embed_tokens.weight.grad is None
    assert torch.equal(extra.grad, torch.zeros(3, dtype=torch.float64))


def test_an_optimizer_steps_on_the_direction():
    model, ids = conflicting_model(), token_batch(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = (torch.tensor(WEIGHTS, dtype=torch.float64) @ conflicting_losses(model, ids)[0]).item()
    for _ in range(5):
        step = MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco")
        step.backward(*conflicting_losses(model, ids))
        step.finish()
        optimizer.step()
    assert (torch.tensor(WEIGHTS, dtype=torch.float64) @ conflicting_losses(model, ids)[0]).item() < before


def test_bad_use_is_reported():
    model, ids = conflicting_model(), token_batch(0)
    step = MultiObjectiveBackward(model.parameters(), [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="3 weights"):
        step.backward(*conflicting_losses(model, ids))
    with pytest.raises(RuntimeError, match="before any backward"):
        step.finish()
