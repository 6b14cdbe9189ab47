"""eval.py: held-out pair metrics against one pair at a time straight from dpo.py, reward models against a direct
forward, a checkpoint on real-style data end to end, and bad input."""
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForSequenceClassification

import dpo
import eval as evaluation
import train
import world
from harness import command_line, run_directory
from harness.batches import tokenize_pairs
from harness.models import load_model
from harness.preference_data import load_pairs
from harness.sampling import Sampling, sample
from test_models import sharpened
from tiny import ROOT, WORDS, tiny_config, tiny_llama, word_tokenizer


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-reward")
    torch.manual_seed(1)
    config = tiny_config()
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return str(path)


def test_reference_against_itself_has_zero_margins_and_batching_changes_nothing(tiny_world):
    tokenizer, reference = load_model(tiny_world["model"], torch.device("cpu"))
    names = ["quality", "conciseness"]
    pairs, _ = load_pairs(tiny_world["eval"], "auto", names, tokenizer)
    cfg = train.Config()
    same = evaluation.pair_metrics(reference, reference, tokenizer, pairs, names, cfg, torch.device("cpu"), 5)
    for i, name in enumerate(names):
        assert same[name]["pairs"] == sum(p.signs[i] != 0 for p in pairs) > 0
        assert same[name]["margin"] == 0.0 and same[name]["accuracy"] == 0.0  # no pair is "won" by a zero margin
    policy = sharpened(reference)
    batched = evaluation.pair_metrics(policy, reference, tokenizer, pairs, names, cfg, torch.device("cpu"), 5)
    for i, name in enumerate(names):  # one pair at a time, straight from dpo.py
        signed = []
        for p in pairs:
            tokens = tokenize_pairs(tokenizer, [p.prompt], [p.response_a], [p.response_b])
            pa, pb = dpo.completion_logps(policy, tokens)[0]
            ra, rb = dpo.completion_logps(reference, tokens)[0]
            if p.signs[i]:
                signed.append(cfg.beta * p.signs[i] * ((pa - pb) - (ra - rb)).item())
        assert batched[name]["accuracy"] == pytest.approx(sum(s > 0 for s in signed) / len(signed))
        assert batched[name]["margin"] == pytest.approx(sum(signed) / len(signed), abs=1e-5)


def test_reward_scores_equal_a_direct_forward_of_each_text(reward_model_dir):
    (tokenizer, model), = evaluation.load_reward_models(evaluation.parse_reward_models(f"good={reward_model_dir}"),
                                                         torch.device("cpu")).values()
    prompts = ["question hello", "question", "hello world question"]
    responses = ["good answer", "bad long long long answer", "short"]
    scores = evaluation.reward_scores(model, tokenizer, prompts, responses, batch_size=2)
    direct = LlamaForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for p, r, s in zip(prompts, responses, scores):
        ids = word_tokenizer()(f"{p} {r}", return_tensors="pt")["input_ids"]
        assert s == pytest.approx(direct(input_ids=ids).logits[0, 0].item(), abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3


def test_checkpoint_on_real_style_data_is_scored_by_reward_models(tiny_model_dir, tiny_pairs, reward_model_dir,
                                                                  tmp_path):
    run = tmp_path / "run"
    train.main(train.parse_args(["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "2",
                                 "--batch-size", "4", "--lr", "1e-2", "--out", str(run)]))
    result = evaluation.main(["--checkpoint", str(run), "--data", tiny_pairs, "--split", "train",
                              "--reward-models", f"good={reward_model_dir}", "--samples", "3",
                              "--max-new-tokens", "6"])
    # strict JSON: a standard error of one prompt is NaN in Python and null in the file
    assert (run / "eval.json").read_text() == json.dumps(run_directory.strict_json(result), indent=2)
    assert math.isnan(result["samples"]["policy"]["tokens_se"]) and "NaN" not in (run / "eval.json").read_text()
    assert set(result["pairs"]) == {"good", "short"} and result["pairs"]["short"]["pairs"] == 4
    assert result["pairs"]["good"]["accuracy"] == 1.0  # trained for 2 steps on exactly these pairs
    policy = result["samples"]["policy"]
    assert policy["samples"] == 3 and {"good", "good_se", "tokens", "kl"} <= set(policy)
    assert "quality" not in policy  # not the world: no exact scores
    assert result["samples"]["reference"]["kl"] == 0.0


BAD_INPUTS = [
    ([], "the following arguments are required: --checkpoint"),
    (["--checkpoint", "no/such/run"], "--checkpoint: no/such/run: expected a finished train.py output with "
                                      "summary.json and policy/"),
    (["--samples", "0", "--checkpoint", "x"], "--samples: expected a positive integer, got 0"),
    (["--temperature", "0", "--checkpoint", "x"], "--temperature: expected a finite number >= 0.0001, got 0.0"),
    (["--temperature", "inf", "--checkpoint", "x"], "--temperature: expected a finite number >= 0.0001, got inf"),
    (["--temperature", "1e-300", "--checkpoint", "x"], "--temperature: expected a finite number >= 0.0001, got "
                                                       "1e-300"),  # logits / temperature would overflow
    (["--seed", "-1", "--checkpoint", "x"], "--seed: expected integers in [0, 2**63), got -1"),
    (["--prompts", "many"], "argument --prompts: invalid int value: 'many'"),
    (["--checkpoint", "x", "--colour"], "unrecognized arguments: --colour"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(flags, message):
    with pytest.raises(command_line.UsageError) as error:
        evaluation.main(flags)
    assert str(error.value) == message


def test_bad_checkpoint_inputs_name_the_flag(tiny_model_dir, tiny_pairs, reward_model_dir, tmp_path):
    other_vocabulary = str(tmp_path / "other-vocabulary")  # a reference that is some other model
    tiny_llama(vocab_size=60).save_pretrained(other_vocabulary)
    word_tokenizer().save_pretrained(other_vocabulary)
    other_ids = str(tmp_path / "other-ids")  # as many tokens, but the same words under other ids
    tiny_llama().save_pretrained(other_ids)
    word_tokenizer(words=WORDS[:4] + WORDS[4:][::-1]).save_pretrained(other_ids)
    run = tmp_path / "run"
    train.main(train.parse_args(["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "1",
                                 "--batch-size", "4", "--out", str(run)]))
    cases = [([], f"--data: the policy was trained on {tiny_pairs}; name its held-out pairs with --data"),
             (["--data", "missing.jsonl"], "missing.jsonl: no such file or directory"),
             (["--data", tiny_pairs, "--reference", "./no/model"], "--reference: ./no/model: no such directory"),
             (["--data", tiny_pairs, "--reward-models", "good"],
              "--reward-models: expected name=PATH_OR_ID[,name=PATH_OR_ID...], got 'good'"),
             (["--data", tiny_pairs, "--reward-models", f"good={tiny_model_dir}x"],
              f"--reward-models: {tiny_model_dir}x: no such directory"),
             (["--data", tiny_pairs, "--reward-models", f"good={tiny_model_dir}"],  # a causal LM, no reward head
              f"--reward-models: {tiny_model_dir}: its weights do not fit its config (LlamaForSequenceClassification):"
              " 1 tensors missing, e.g. 'score.weight'"),
             (["--data", tiny_pairs, "--reward-models", f"kl={reward_model_dir}"],  # would replace the KL column
              "--reward-models: the name 'kl' is taken (by another reward model or a score the samples already "
              "have: kl, samples, tokens); pick another"),
             (["--data", tiny_pairs, "--reward-models", f"a={reward_model_dir},a={reward_model_dir}"],
              "--reward-models: the name 'a' is taken (by another reward model or a score the samples already have: "
              "kl, samples, tokens); pick another"),
             (["--data", tiny_pairs, "--reward-models", f"good={reward_model_dir}x"],  # before any model loads
              f"--reward-models: {reward_model_dir}x: no such directory"),
             (["--data", tiny_pairs, "--reference", other_vocabulary],
              f"--reference: {other_vocabulary} has a vocabulary of 60 tokens, the policy one of 49: it is not the "
              "model the policy came from"),
             (["--data", tiny_pairs, "--reference", other_ids],  # once KL 122 and nonsense accuracies, exit 0
              f"--reference: {other_ids} tokenizes the held-out text 'question hello' into other ids than the "
              "policy's tokenizer does: it is not the model the policy came from"),
             (["--out", str(tmp_path)], f"--out: {tmp_path} is a directory; expected the path of a .json file"),
             (["--out", ""], "--out: empty; expected the path of a .json file"),
             (["--out", str(run / "summary.json")], f"--out: {run / 'summary.json'} is one of the run's own files; "
                                                    "name another"),
             (["--out", str(run / "policy" / "config.json")],
              f"--out: {run / 'policy' / 'config.json'} is one of the run's own files; name another"),
             (["--out", str(run / "summary.json" / "eval.json")],
              f"--out: {run / 'summary.json'} is a file, not a directory")]
    for flags, message in cases:
        with pytest.raises(command_line.INPUT_ERRORS) as error:
            evaluation.main(["--checkpoint", str(run), *flags])
        assert str(error.value) == message
    summary = (run / "summary.json").read_text()
    for broken, message in (("{", "not readable JSON (Expecting property name enclosed in double quotes: line 1 "
                                  "column 2 (char 1))"),
                            ("[]", "expected a 'config' dict, as train.py writes it"),
                            (summary.replace('"objectives"', '"names"'), "expected a 'objectives' list, as train.py "
                                                                         "writes it"),
                            (summary.replace('"max_length": 256', '"max_length": "x"'),
                             "config.max_length: expected int, got 'x'"),
                            (summary.replace('"beta": 0.1', '"beta": -1'),
                             "config: --beta: invalid value -1 (see --help)")):
        assert broken != summary
        (run / "summary.json").write_text(broken)
        with pytest.raises(command_line.UsageError) as error:
            evaluation.main(["--checkpoint", str(run), "--data", tiny_pairs])
        assert str(error.value) == f"--checkpoint: {run / 'summary.json'}: {message}"


def test_sample_prints_the_policys_responses_to_given_prompts(tiny_world, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train.main(train.parse_args(["--model", tiny_world["model"], "--data", tiny_world["train"], "--steps", "1",
                                 "--batch-size", "8", "--eval-prompts", "0", "--out", str(run)]))
    prompts = world.eval_prompts(3)
    monkeypatch.setattr(sys, "stdin", io.StringIO(prompts[2] + "\n\n"))  # `--sample -`: one prompt per line
    capsys.readouterr()
    texts = evaluation.main(["--checkpoint", str(run), "--sample", prompts[0], "--sample", prompts[1], "--sample",
                             "-", "--samples", "2", "--max-new-tokens", "8"])
    policy = load_model(str(run / "policy"), torch.device("cpu"))
    assert texts == sample(policy[1], policy[0], prompts, Sampling(2, 0.6, 8, 0))[0]  # the seeded sampler
    expected = "".join(f"{p}\n" + "".join(f"  {r}\n" for r in responses) for p, responses in zip(prompts, texts))
    assert capsys.readouterr().out == expected
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    with pytest.raises(command_line.UsageError, match="^--sample: no prompt given$"):
        evaluation.main(["--checkpoint", str(run), "--sample", "-"])


def test_command_line_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "eval.py", "--checkpoint", "no/such/run"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --checkpoint: no/such/run: expected a finished train.py output with "
                                     "summary.json and policy/")
