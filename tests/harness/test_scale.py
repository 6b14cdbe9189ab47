"""harness/scale.py: raco.MultiObjectiveBackward's extension steps as its options promise: loss weighting in one
backward pass, the dual per micro-batch, the subset Gram matrix; and the plain class wherever nothing more is asked.
(Several processes: tests/harness/test_distributed.py.)"""

import types

import pytest
import torch

from cagrad import coefficients
from harness.scale import ScaledBackward, SubsetGramBackward, WeightedLossBackward, multi_objective_backward
from raco import MultiObjectiveBackward
from tiny import conflicting_losses, conflicting_model, flat_gradients, grad_vector, token_batch

WEIGHTS = [0.3, 0.7]


@pytest.mark.parametrize("diagnostics, passes", [(False, 1), (True, 2)])
def test_loss_weighting_takes_one_backward_pass_unless_diagnostics_are_asked_for(diagnostics, passes):
    model, ids = conflicting_model(), [token_batch(10), token_batch(11)]
    F = (flat_gradients(model, ids[0]) + flat_gradients(model, ids[1])) / 2
    rows = MultiObjectiveBackward(model.parameters(), WEIGHTS, "lw")
    step, counted = WeightedLossBackward(rows, lambda: diagnostics), []
    # once per backward pass through the model (the embedding is the last parameter any pass reaches)
    model.model.embed_tokens.weight.register_post_accumulate_grad_hook(lambda param: counted.append(1))
    for x in ids:
        step.backward(*conflicting_losses(model, x))
    logged = step.finish()
    assert len(counted) == 2 * passes and (rows.G is None) == (not diagnostics)
    # one pass of the weighted loss rounds differently (the model's rotary tables are float32): 1e-6, not 1e-9
    expected = torch.tensor(WEIGHTS, dtype=torch.float64) @ F
    assert (grad_vector(model) - expected).norm() < 1e-6 * expected.norm()
    assert ("grad_norm/0" in logged) == diagnostics


def test_solve_per_micro_batch_averages_directions():
    model, ids = conflicting_model(), [token_batch(10), token_batch(11)]
    expected = 0
    for x in ids:
        F = flat_gradients(model, x)
        expected = expected + coefficients(F @ F.T, WEIGHTS, "raco")[0] @ F / 2
    step = ScaledBackward(MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco"), solve_per="micro_batch")
    for x in ids:
        step.backward(*conflicting_losses(model, x))
    step.finish()
    assert torch.allclose(grad_vector(model), expected, rtol=1e-9, atol=1e-14)
    # and the two modes genuinely differ with two micro-batches, so the switch matters
    step = ScaledBackward(MultiObjectiveBackward(model.parameters(), WEIGHTS, "raco"), solve_per="step")
    for x in ids:
        step.backward(*conflicting_losses(model, x))
    step.finish()
    assert not torch.allclose(grad_vector(model), expected, rtol=1e-6)


def test_subset_gram_solves_on_the_last_block_then_steps_on_every_parameter():
    model, ids = conflicting_model(), token_batch(6)
    F = flat_gradients(model, ids)
    params = list(model.parameters())
    last_block = {id(p) for p in model.model.layers[-1].parameters()}
    in_block = torch.cat([torch.full((p.numel(),), id(p) in last_block) for p in params])
    F_block = F[:, in_block]  # the same gradients, restricted to the last block's coordinates
    a_block, _ = coefficients(F_block @ F_block.T, WEIGHTS, "raco")
    a_full, _ = coefficients(F @ F.T, WEIGHTS, "raco")
    assert not torch.allclose(a_block, a_full, rtol=1e-3)  # the approximation is a different solve
    step = SubsetGramBackward(params, WEIGHTS, "raco", 0.4, None, list(model.model.layers[-1].parameters()))
    step.backward(*conflicting_losses(model, ids))
    logged = step.finish()
    assert torch.allclose(torch.tensor([logged["a/0"], logged["a/1"]], dtype=torch.float64), a_block, rtol=1e-10)
    expected = a_block @ F  # one full backward of a^T L (rounded differently from two: float32 rotary tables)
    assert (grad_vector(model) - expected).norm() < 1e-6 * expected.norm()


def test_bad_use_is_reported():
    model = conflicting_model()
    with pytest.raises(ValueError, match="solve_per"):
        ScaledBackward(MultiObjectiveBackward(model.parameters(), WEIGHTS), solve_per="epoch")


def test_the_plain_class_unless_the_run_asks_for_more():
    model = conflicting_model()
    plain = types.SimpleNamespace(gram_layers=0, solve_per="step", c=0.4, backward="per_objective")
    pick = lambda cfg, method: type(multi_objective_backward(cfg, model, model.parameters(), WEIGHTS, method,  # noqa: E731
                                                             ["a", "b"], lambda: True))
    assert pick(plain, "raco") is MultiObjectiveBackward and pick(plain, "mgda") is MultiObjectiveBackward
    assert pick(plain, "lw") is WeightedLossBackward  # its one-backward shortcut
    assert pick(types.SimpleNamespace(**{**vars(plain), "solve_per": "micro_batch"}), "raco") is ScaledBackward
    assert pick(types.SimpleNamespace(**{**vars(plain), "gram_layers": 1}), "raco") is SubsetGramBackward
