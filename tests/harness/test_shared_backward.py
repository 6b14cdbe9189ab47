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
from harness.scale import ShardedRows, WeightedLossBackward, multi_objective_backward
from harness.shared_backward import NotShareable, SharedBackward, shared_or_fallback
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
    for backward, first, after in ((MultiObjectiveBackward(params, [0.2, 0.3, 0.5]), 3, 3),
                                   (SharedBackward(policy, params, [0.2, 0.3, 0.5]), 2, 1)):
        for expected in (first, after):  # the first micro-batch also runs the direct pass that checks the one pass
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


def test_under_bf16_autocast_the_rows_agree_to_bf16_rounding(world_batch):
    """bf16 autocast over float32 weights (--dtype bfloat16): the products are taken on bf16 activations, as autograd
    takes them, in another order; the rows agree to bf16's rounding, and the first micro-batch's check passes."""
    base, batch = world_batch
    policy, reference = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    params = list(policy.parameters())
    rows = []
    for backward in (MultiObjectiveBackward(params, [0.5, 0.5]), SharedBackward(policy, params, [0.5, 0.5])):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses, logps = step_inputs(policy, reference, batch, 2)
        backward.backward(losses, logps)
        rows.append(backward.G.clone())
    assert relative(rows[1], rows[0]) < 2e-2
    assert relative(rows[1][0], rows[1][1]) > 0.5  # the two objectives' rows differ far more than that


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--grad-accum", "2"], ["--grad-accum", "2", "--solve-per", "micro_batch"],
                                   ["--method", "lw", "--log-every", "2"]])
def test_accumulation_micro_batch_duals_and_loss_weighting_train_alike(tiny_world, tmp_path, extra):
    """The one pass under what the runs around it vary: micro-batches accumulated into G, the dual solved per
    micro-batch, DPO-LW (its logged steps through the one pass, the others through the weighted loss)."""
    tolerance = 1e-4
    common = ["--model", tiny_world["model"], "--data", tiny_world["train"], "--steps", "4", "--batch-size", "8",
              "--lr", "1e-2", "--eval-prompts", "0", "--save-every", "0", *extra]
    for backward in ("per_objective", "shared"):
        train.main(train.parse_args([*common, "--backward", backward, "--out", str(tmp_path / backward)]))
    per_objective, shared = (load_file(str(tmp_path / b / "policy" / "model.safetensors"))
                             for b in ("per_objective", "shared"))
    for key, value in per_objective.items():
        assert torch.allclose(shared[key], value, rtol=tolerance, atol=tolerance), key
    initial = load_file(f"{tiny_world['model']}/model.safetensors")
    assert max((value - initial[key]).abs().max() for key, value in per_objective.items()) > 10 * tolerance


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
    sharded = shared_or_fallback(config(), model, list(model.parameters()), [0.5, 0.5], "raco", None, ShardedRows)
    assert type(sharded) is ShardedRows  # what multi_objective_backward passes when the parameters are FSDP2 shards
    assert capsys.readouterr().err.endswith("per objective: FSDP2 shards the parameters\n")
    model = tiny_llama()
    assert type(multi_objective_backward(config(), model, list(model.parameters()), [0.5, 0.5], "raco", None,
                                         lambda: True)) is SharedBackward and capsys.readouterr().err == ""
    one = multi_objective_backward(config(), model, list(model.parameters()), [1.0], "raco", None, lambda: True)
    assert type(one) is MultiObjectiveBackward and capsys.readouterr().err == ""  # one objective: one pass already


class ScaledEmbedding(torch.nn.Embedding):
    """An embedding with a forward of its own, as Gemma's multiplies by sqrt(hidden size)."""

    def forward(self, ids):
        return super().forward(ids) * 3.0


class TiedHead(torch.nn.Module):
    """An output layer that multiplies by the embedding's weight without calling any module: F.linear(h, E)."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, hidden):
        return torch.nn.functional.linear(hidden, self.embedding.weight)


def test_an_embedding_with_a_forward_of_its_own_goes_through_its_own_backward(world_batch):
    _, batch = world_batch
    policy = tiny_llama(3, vocab_size=64)
    scaled = ScaledEmbedding(64, 16)
    scaled.load_state_dict(policy.model.embed_tokens.state_dict())
    policy.model.embed_tokens = scaled
    reference, params = copy.deepcopy(policy).eval(), list(policy.parameters())
    per_objective = gradients(MultiObjectiveBackward(params, [0.5, 0.5]), policy, reference, batch, 2)
    one_pass = gradients(SharedBackward(policy, params, [0.5, 0.5]), policy, reference, batch, 2)
    assert relative(one_pass[0], per_objective[0]) < 1e-5


@pytest.mark.parametrize("break_it", ["rows mix", "weight outside its module"])
def test_a_model_the_one_pass_would_get_wrong_is_refused(world_batch, break_it):
    base, batch = world_batch
    policy = copy.deepcopy(base).train()
    if break_it == "rows mix":  # every row's embeddings shifted by the batch's mean, as batch norm in training does
        policy.model.embed_tokens.register_forward_hook(lambda module, inputs, output: output + output.mean(0))
    else:
        policy.config.tie_word_embeddings = False
        policy.lm_head = TiedHead(policy.model.embed_tokens)
    reference = copy.deepcopy(policy).eval()
    shared = SharedBackward(policy, list(policy.parameters()), [0.5, 0.5])
    with pytest.raises(NotShareable, match="differ from a direct backward pass by"):
        shared.backward(*step_inputs(policy, reference, batch, 2))


def test_it_leaves_the_model_as_it_found_it_when_it_goes(world_batch):
    import gc
    import weakref
    base, batch = world_batch
    policy, reference = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in policy.modules())  # noqa: E731
    shared = SharedBackward(policy, list(policy.parameters()), [0.5, 0.5])
    assert hooks() > 0
    shared.backward(*step_inputs(policy, reference, batch, 2))
    shared.finish()
    gone, rows = weakref.ref(shared), weakref.ref(shared.G)
    gc.disable()  # freed by reference counting alone: no cycle through the model keeps it
    try:
        del shared
        assert gone() is None and rows() is None and hooks() == 0
    finally:
        gc.enable()


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

