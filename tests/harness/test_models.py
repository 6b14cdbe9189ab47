"""policy.py: the one sampler and its log-probs against an unpadded forward of each sample, KL against the
reference, left padding that changes nothing, and the shipped world model sampled through it."""
import copy
import json
import os
import shutil

import pytest
import torch

import world
from harness.models import ModelError, eval_mode, load_model
from harness.sampling import Sampling, evaluate_samples, sample, sampled_logps
from tiny import ROOT

MODEL_DIR = os.path.join(ROOT, "models", "world-tiny")


def sharpened(model):
    """A changed copy of a model: its final norm scaled up, so every next-token distribution sharpens."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.norm.weight.mul_(20.0)
    return changed


@pytest.fixture(scope="module")
def shipped():
    return load_model(MODEL_DIR, torch.device("cpu"))


def test_kl_is_exactly_zero_for_the_reference_against_itself_and_positive_for_a_changed_model(tiny_world):
    tokenizer, reference = load_model(tiny_world["model"], torch.device("cpu"))
    prompts = world.eval_prompts(6)
    how = Sampling(num_samples=3, max_new_tokens=16)
    same, _ = evaluate_samples(reference, tokenizer, prompts, how, world.score, reference=reference)
    assert same["kl"] == 0.0 and same["kl_se"] == 0.0
    changed, _ = evaluate_samples(sharpened(reference), tokenizer, prompts, how, world.score, reference=reference)
    assert changed["kl"] > 3 * changed["kl_se"] > 0
    assert set(world.OBJECTIVES) | {"well_formed", "words", "kl"} <= set(changed)


def test_without_a_scorer_the_length_in_tokens_is_reported(tiny_world):
    tokenizer, model = load_model(tiny_world["model"], torch.device("cpu"))
    prompts = world.eval_prompts(3)
    scores, examples = evaluate_samples(model, tokenizer, prompts, Sampling(num_samples=2, max_new_tokens=5, seed=1))
    _, batches = sample(model, tokenizer, prompts, Sampling(2, 0.6, max_new_tokens=5, seed=1))
    lengths = [int(m.sum()) for b in batches for m in b["completion_mask"]]
    assert set(scores) == {"samples", "tokens", "tokens_se"} and scores["samples"] == 6
    assert scores["tokens"] == pytest.approx(sum(lengths) / 6) and 1 <= min(lengths) and max(lengths) <= 5
    assert [e["tokens"] for e in examples] == lengths[::2]  # the first response to each prompt
    assert [e["prompt"] for e in examples] == prompts


def test_sampled_logps_match_an_unpadded_forward_up_to_the_first_eos(tiny_world):
    tokenizer, model = load_model(tiny_world["model"], torch.device("cpu"))
    prompts = world.eval_prompts(5)  # prompts of 3 to 5 facts: different lengths, so left padding is exercised
    texts, batches = sample(model, tokenizer, prompts, Sampling(2, 1.0, max_new_tokens=30, seed=3, batch_size=3))
    logps, k = sampled_logps(model, batches, rows_per_forward=4), 0  # batches of 6 rows: chunks 4 + 2
    ended = 0
    for batch in batches:
        for ids, completion in zip(batch["input_ids"], batch["completion_mask"]):
            prompt = tokenizer(prompts[k // 2])["input_ids"]  # [bos] prompt, as the world trains its model
            response = ids[completion.bool()].tolist()
            ended += response[-1] == tokenizer.eos_token_id
            assert tokenizer.eos_token_id not in response[:-1]
            full = torch.tensor([prompt + response])
            token_logps = torch.log_softmax(model(input_ids=full).logits[0, :-1].double(), -1)
            expected = sum(token_logps[len(prompt) - 1 + t, y].item() for t, y in enumerate(response))
            assert logps[k] == pytest.approx(expected, abs=1e-4)
            assert texts[k // 2][k % 2] == tokenizer.decode(response, skip_special_tokens=True)
            k += 1
    assert k == 10 and 0 < ended < 10  # some samples stopped at EOS, some ran out of tokens


def test_left_padding_does_not_change_what_a_prompt_gets(shipped):
    """Near-greedy sampling of a short prompt, alone and in a batch with longer prompts, must agree."""
    tokenizer, model = shipped
    short = "facts: the cat is happy . the dog is slow . the owl is old . summary:"
    long = "facts: the cat is happy . the dog is slow . the owl is old . the bee is red . the elk is tall . summary:"
    alone, _ = sample(model, tokenizer, [short], Sampling(1, 1e-3, seed=0))
    batched, _ = sample(model, tokenizer, [long, short, long], Sampling(1, 1e-3, seed=5))
    assert [batched[1]] == alone


def test_sampling_is_seeded_and_leaves_mode_and_global_rng_as_found(shipped):
    tokenizer, model = shipped
    prompts = world.eval_prompts(8, seed=11)
    model.train()
    state = torch.random.get_rng_state()
    first, _ = sample(model, tokenizer, prompts, Sampling(1, 1.0, seed=0))
    assert model.training and torch.equal(torch.random.get_rng_state(), state)
    assert sample(model, tokenizer, prompts, Sampling(1, 1.0, seed=0))[0] == first
    assert sample(model, tokenizer, prompts, Sampling(1, 1.0, seed=1))[0] != first
    model.eval()


def test_eval_mode_restores_each_models_own_mode_even_after_an_error():
    a, b = torch.nn.Dropout(), torch.nn.Dropout()
    b.eval()
    with pytest.raises(RuntimeError), eval_mode(a, b):
        assert not a.training and not b.training
        raise RuntimeError
    assert a.training and not b.training


def test_shipped_model_samples_are_mostly_well_formed(shipped):
    tokenizer, model = shipped
    prompts = world.eval_prompts(32, seed=11)
    samples, _ = sample(model, tokenizer, prompts, Sampling(1, 1.0, max_new_tokens=48, seed=0))
    assert len(samples) == 32 and all(len(s) == 1 for s in samples)
    assert sum(world.parse_response(s[0]) is not None for s in samples) / 32 > 0.8
    assert sum(world.score(p, s[0])["quality"] for p, s in zip(prompts, samples)) / 32 > 0.2  # it does summarise


def broken_copy(source, tmp_path, name, change):
    path = tmp_path / name
    shutil.copytree(source, path)
    change(path)
    return str(path)


def test_a_model_directory_that_cannot_be_used_is_one_line_naming_what_is_wrong(tiny_model_dir, tmp_path):
    def truncate(path):
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    def other_architecture(path):  # config says GPT-2, the weights are a Llama's
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2",
                                                      "architectures": ["GPT2LMHeadModel"]}))

    cases = [
        (lambda p: (p / "tokenizer.json").unlink() or (p / "tokenizer_config.json").unlink(),
         "no tokenizer (tokenizer.json or tokenizer_config.json); save one beside the weights with "
         "tokenizer.save_pretrained"),
        (lambda p: (p / "config.json").unlink(), "no config.json (not a Hugging Face model directory)"),
        (lambda p: (p / "model.safetensors").unlink(), "no weights (*.safetensors or pytorch_model*.bin)"),
    ]
    for n, (change, message) in enumerate(cases):
        path = broken_copy(tiny_model_dir, tmp_path, f"case{n}", change)
        with pytest.raises(ModelError) as error:
            load_model(path, torch.device("cpu"), "--reference")
        assert str(error.value) == f"--reference: {path}: {message}"
    path = broken_copy(tiny_model_dir, tmp_path, "truncated", truncate)
    with pytest.raises(ModelError, match=f"^--model: could not load '{path}': .*(header|incomplete|EOF)"):
        load_model(path, torch.device("cpu"))
    path = broken_copy(tiny_model_dir, tmp_path, "gpt2", other_architecture)
    with pytest.raises(ModelError) as error:  # from_pretrained alone would fill a GPT-2 with random weights
        load_model(path, torch.device("cpu"))
    assert str(error.value).startswith(f"--model: {path}: its weights do not fit its config (GPT2LMHeadModel): ")


def test_weights_and_config_that_disagree_in_size_are_refused_not_cut_or_padded(tiny_model_dir, tmp_path):
    from tiny import tiny_llama

    def config_says(**change):
        def edit(path):
            config = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps({**config, **change}))
        return edit

    def small_vocabulary(path):  # weights that fit the config, but 20 rows for the tokenizer's 49 tokens
        tiny_llama(vocab_size=20).save_pretrained(path, safe_serialization=True)

    for name, change, message in (
            ("fewer-layers", config_says(num_hidden_layers=0), "tensors it has no place for, e.g. 'model.layers.0."),
            ("other-width", config_says(intermediate_size=8), "tensors of another shape, e.g. 'model.layers.0.mlp."),
            ("small-vocab", small_vocabulary, "its tokenizer has 49 tokens but its embedding only 20 rows")):
        path = broken_copy(tiny_model_dir, tmp_path, name, change)
        with pytest.raises(ModelError) as error:
            load_model(path, torch.device("cpu"))
        assert str(error.value).startswith(f"--model: {path}: ") and message in str(error.value), name
