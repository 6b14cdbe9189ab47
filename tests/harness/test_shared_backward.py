"""harness/shared_backward.py: one backward pass gives the rows of G that m per-objective passes give, on the world's
model (a tied output layer) and on a tiny Llama with LoRA, for m = 1, 2, 3 and every method; a run with it trains to
the same weights; what it does not cover falls back with one line; a model whose rows mix is refused."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import dpo
import train
from harness.batches import collate
from harness.models import add_lora, load_model
from harness.preference_data import load_pairs
from harness.scale import WeightedLossBackward, multi_objective_backward
from harness.shared_backward import NotShareable, SharedBackward
from raco import MultiObjectiveBackward
from tiny import ROOT, tiny_llama

OBJECTIVES = ["quality", "conciseness", "faithfulness"]
METHODS = ("lw", "cagrad", "raco", "mgda", "pcgrad")


@pytest.fixture(scope="module")
def world_batch():
    tokenizer, model = load_model(f"{ROOT}/models/world-tiny", torch.device("cpu"))
    pairs, _ = load_pairs(f"{ROOT}/data/world_train.jsonl", objectives=OBJECTIVES, limit=12, tokenizer=tokenizer)
    return model, collate(pairs, tokenizer, 256, 192, torch.device("cpu"))


def lora_llama():
    """A tiny Llama with LoRA on every linear layer, its B matrices made non-zero so that every adapter has a
    gradient; the world's batch fits its vocabulary (49 ids). (peft keeps adapters in float32.)"""
    model = add_lora(tiny_llama(3, vocab_size=64, tie_word_embeddings=True), 4, 8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    return model


def completion_logps(model, batch):
    """dpo.completion_logps, but in float64 for a float64 model (dpo.py's log-probs are float32 by design): the
    float64 comparison then sees the method's rounding, not float32's."""
    if next(model.parameters()).dtype != torch.float64:
        return dpo.completion_logps(model, batch)
    ids, mask = batch["input_ids"], batch["completion_mask"][:, 1:]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.where(mask.bool(), token_logps, torch.zeros_like(token_logps)).sum(-1), mask.sum(-1)


def step_inputs(policy, reference, batch, m, amopo=False):
    """The losses and log-probs train.objective_losses makes (DPO's margin, or AMoPO's) for the first m objectives."""
    logps, lengths = completion_logps(policy, batch)
    with torch.no_grad():
        ref_a, ref_b = completion_logps(reference, batch)[0].chunk(2)
    margin = dpo.amopo_margin(*logps.chunk(2), *lengths.chunk(2)) if amopo else \
        dpo.log_ratio_margin(*logps.chunk(2), ref_a, ref_b)
    return dpo.dpo_losses(margin, batch["signs"][:, :m].to(logps.dtype), 0.1), logps


def gradients(backward, policy, reference, batch, m, amopo=False):
    """backward's rows G and, after finish(), the direction in .grad (flat)."""
    backward.backward(*step_inputs(policy, reference, batch, m, amopo))
    G = backward.G.clone()
    backward.finish()
    params = [p for p in policy.parameters() if p.requires_grad]
    direction = torch.cat([p.grad.reshape(-1) for p in params])
    for p in params:
        p.grad = None
    return G, direction


def relative(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


def float64_llama():
    """A tiny float64 Llama whose norms are torch's nn.RMSNorm: Llama's own computes in float32 whatever its input,
    which would bring float32's rounding into a float64 comparison. Its padding token is the world's "the" (id 5),
    which every response holds: nn.Embedding's backward leaves the padding row out, and so must the one pass."""
    model = tiny_llama(3, vocab_size=64, tie_word_embeddings=True, pad_token_id=5).double()
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "LlamaRMSNorm":
            norm = torch.nn.RMSNorm(module.weight.shape, eps=module.variance_epsilon, dtype=torch.float64)
            with torch.no_grad():
                norm.weight.normal_(1.0, 0.1)  # not all ones, so that a wrong weight gradient would show
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, norm)
    return model


MODELS = {"world": lambda base: copy.deepcopy(base), "lora": lambda base: lora_llama(),
          "float64": lambda base: float64_llama()}


@pytest.mark.parametrize("model_kind, tolerance", [("world", 1e-5), ("lora", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_one_pass_gives_the_rows_and_directions_of_per_objective_passes(world_batch, model_kind, tolerance, m):
    base, batch = world_batch
    policy = MODELS[model_kind](base)
    reference = copy.deepcopy(policy).eval()
    policy.train()
    params, weights = [p for p in policy.parameters() if p.requires_grad], [1.0 / m] * m
    for method in METHODS + ("amopo",):
        solve = "lw" if method == "amopo" else method
        per_objective = gradients(MultiObjectiveBackward(params, weights, solve, 0.4), policy, reference, batch, m,
                                  method == "amopo")
        shared = SharedBackward(policy, params, weights, solve, 0.4)
        one_pass = gradients(shared, policy, reference, batch, m, method == "amopo")
        for handle in shared.handles:
            handle.remove()
        assert relative(one_pass[0], per_objective[0]) < tolerance, (method, "rows of G")
        assert relative(one_pass[1], per_objective[1]) < 10 * tolerance, (method, "direction")
        assert per_objective[0].norm(dim=1).min() > 0  # every objective has a gradient to compare


def test_it_is_one_backward_pass_through_the_model(world_batch):
    base, batch = world_batch
    policy, reference = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    params, passes = list(policy.parameters()), []
    policy.model.layers[0].register_full_backward_hook(lambda *args: passes.append(1))
    for backward, expected in ((MultiObjectiveBackward(params, [0.2, 0.3, 0.5]), 3),
                               (SharedBackward(policy, params, [0.2, 0.3, 0.5]), 1)):
        passes.clear()
        backward.backward(*step_inputs(policy, reference, batch, 3))
        assert len(passes) == expected


def test_loss_weighting_logs_its_diagnostics_through_the_one_pass(world_batch):
    base, batch = world_batch
    policy, reference = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    params = list(policy.parameters())
    _, expected = gradients(MultiObjectiveBackward(params, [0.5, 0.5], "lw"), policy, reference, batch, 2)
    for logged in (True, False):  # the one pass on logged steps; the weighted loss's own pass, hooks idle, on others
        step = WeightedLossBackward(SharedBackward(policy, params, [0.5, 0.5], "lw"), lambda: logged)
        step.backward(*step_inputs(policy, reference, batch, 2))
        diagnostics = step.finish()
        direction = torch.cat([p.grad.reshape(-1) for p in params])
        assert relative(direction, expected) < 1e-5 and ("cos/0-1" in diagnostics) == logged
        for p in params:
            p.grad = None


@pytest.mark.slow
@pytest.mark.parametrize("m", [2, 3])
def test_six_steps_train_the_same_weights(tiny_world, tmp_path, m):
    common = ["--model", tiny_world["model"], "--data", tiny_world["train"], "--steps", "6", "--batch-size", "8",
              "--lr", "1e-2", "--eval-prompts", "0", "--save-every", "0", "--objectives", ",".join(OBJECTIVES[:m]),
              "--weights", ",".join(["1"] * m)]
    for backward in ("per_objective", "shared"):
        train.main(train.parse_args([*common, "--backward", backward, "--out", str(tmp_path / backward)]))
    per_objective, shared = (load_file(str(tmp_path / b / "policy" / "model.safetensors"))
                             for b in ("per_objective", "shared"))
    initial = load_file(f"{tiny_world['model']}/model.safetensors")
    for key, value in per_objective.items():
        assert torch.allclose(shared[key], value, rtol=1e-4, atol=1e-4), key
    assert max((value - initial[key]).abs().max() for key, value in per_objective.items()) > 1e-3  # they moved


def config(**overrides):
    return train.Config(**{"backward": "shared", **overrides})


def test_what_it_does_not_cover_falls_back_with_one_line(capsys):
    model = tiny_llama()
    params = list(model.parameters())
    picked = multi_objective_backward(config(gradient_checkpointing=True), model, params, [0.5, 0.5], "raco", None,
                                      lambda: True)
    assert type(picked) is MultiObjectiveBackward
    assert capsys.readouterr().err == ("warning: --backward shared falls back to one backward pass per objective: "
                                       "gradient checkpointing recomputes the forward pass inside the backward one\n")
    model.lm_head = torch.nn.Sequential(torch.nn.Conv1d(16, 16, 1))  # a trainable parameter in another module
    picked = multi_objective_backward(config(), model, list(model.parameters()), [0.5, 0.5], "raco", None,
                                      lambda: True)
    assert type(picked) is MultiObjectiveBackward
    assert "parameter lm_head.0.weight belongs to a Conv1d, which it does not cover" in capsys.readouterr().err
    model = tiny_llama()
    assert type(multi_objective_backward(config(), model, list(model.parameters()), [0.5, 0.5], "raco", None,
                                         lambda: True)) is SharedBackward and capsys.readouterr().err == ""


def test_a_model_whose_rows_mix_is_refused(world_batch):
    base, batch = world_batch
    policy, reference = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    shared = SharedBackward(policy, list(policy.parameters()), [0.5, 0.5])
    # every row's embeddings shifted by the batch's mean: what batch normalisation in training mode does
    policy.model.embed_tokens.register_forward_hook(lambda module, inputs, output: output + output.mean(0))
    with pytest.raises(NotShareable, match="lets one row of a batch change the outputs of the others"):
        shared.backward(*step_inputs(policy, reference, batch, 2))


def test_the_world_run_is_the_same_run(tmp_path):
    """The default run's losses and coefficients, both ways, agree step by step to float rounding."""
    common = ["--model", f"{ROOT}/models/world-tiny", "--data", f"{ROOT}/data/world_train.jsonl", "--steps", "4",
              "--log-every", "1", "--eval-prompts", "0", "--save-every", "0"]
    for backward in ("per_objective", "shared"):
        train.main(train.parse_args([*common, "--backward", backward, "--out", str(tmp_path / backward)]))
    lines = [[json.loads(line) for line in open(tmp_path / b / "metrics.jsonl")] for b in ("per_objective", "shared")]
    for a, b in zip(*lines, strict=True):
        for key in ("quality/loss", "conciseness/loss", "a/quality", "cos/quality-conciseness", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key

