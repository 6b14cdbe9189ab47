"""eval.py: the metrics against hand computations, the model-based measurements against independent ones (a
reference against itself, one pair or one text at a time), the sweep end to end, and bad input."""
import copy
import csv
import json
import math
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

import data
import dpo
import eval as evaluation
import train
import world
from tiny import tiny_config, word_tokenizer
from eval import dominates, fraction_dominated, hypervolume_2d, kl_estimate, mean_se, pareto_front, ranks, spearman

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, and on a busy 2-core machine threads
    waiting for each other made sampling 10-50x slower. Restored afterwards for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ----------------------------------------------------------------------------- pure metrics, by hand


def test_hypervolume_of_a_staircase_by_hand():
    # strips from the right: 3 * 1 + 2 * (2 - 1) + 1 * (3 - 2) = 6
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1)], (0, 0)) == pytest.approx(6.0)
    # from (0.5, 0.5): 2.5 * 0.5 + 1.5 * 1 + 0.5 * 1 = 3.25
    assert hypervolume_2d([(3, 1), (1, 3), (2, 2)], (0.5, 0.5)) == pytest.approx(3.25)
    assert hypervolume_2d([(2, 5)], (1, 1)) == pytest.approx(4.0)
    assert hypervolume_2d([], (0, 0)) == 0.0


def test_dominated_and_duplicate_points_do_not_change_the_hypervolume():
    front = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume_2d(front + [(1.5, 1.5), (2, 2), (1, 1), (3, 0.5)], (0, 0)) == pytest.approx(6.0)


def test_points_not_beyond_the_reference_are_ignored():
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1), (-1, 10), (10, 0), (0, 9)], (0, 0)) == pytest.approx(6.0)
    assert hypervolume_2d([(1, 1)], (1, 0)) == 0.0


def test_dominance_and_front():
    assert dominates((2, 2), (1, 2)) and not dominates((1, 2), (2, 2))
    assert not dominates((2, 2), (2, 2))  # equal points do not dominate each other
    assert not dominates((3, 1), (1, 3))
    points = [(1, 3), (2, 2), (1.5, 1.5), (3, 1), (2, 2), (0, 0)]
    assert pareto_front(points) == [(1, 3), (2, 2), (3, 1), (2, 2)]
    assert fraction_dominated([(1, 1), (2, 2), (5, 0)], [(2, 2), (1, 3)]) == pytest.approx(1 / 3)


def test_spearman_by_hand_including_ties():
    assert ranks([5, 7, 7, 1]) == [2, 3.5, 3.5, 1]
    # no ties: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): covariance 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([0.1, 0.5, 0.9], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.5, 0.9], [2.0, 8.0, 9.0]) == pytest.approx(1.0)  # ranks, not values
    assert math.isnan(spearman([0.1, 0.5, 0.9], [0.4, 0.4, 0.4]))  # scores that ignore the weights


def test_mean_and_standard_error_by_hand():
    # groups of 2 (one prompt's samples): means 1.5 and 3.5 -> mean 2.5, std sqrt(2), error sqrt(2) / sqrt(2) = 1
    assert mean_se([1, 2, 3, 4], group_size=2) == pytest.approx((2.5, 1.0))
    assert mean_se([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3 / 4)))
    assert math.isnan(mean_se([3.0])[1])
    assert kl_estimate([-1.0, -2.0, -3.0, -4.0], [-2.0, -2.0, -2.0, -2.0]) == pytest.approx(
        (-0.5, math.sqrt(5 / 3 / 4)))


# ----------------------------------------------------------------------------- models built here


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-reward")
    torch.manual_seed(1)
    config = tiny_config()
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """The embedded world in miniature, no pretraining: its tokenizer, a random 1-layer model, and signed pairs of
    the writer's responses labelled by the exact scores (world_train.jsonl, world_eval.jsonl)."""
    root = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    tokenizer = world.train_tokenizer([p + " " + world.write_response(p, rng) for p in world.make_prompts(200, 0)])
    torch.manual_seed(0)
    model = world.make_model(tokenizer, hidden=16, layers=1, heads=2)
    model.save_pretrained(root / "world-tiny")
    tokenizer.save_pretrained(root / "world-tiny")
    for name, prompts in (("world_train", world.make_prompts(48, 1)), ("world_eval", world.eval_prompts(24, 2))):
        rows = []
        for p in prompts:
            a, b = world.write_response(p, rng), world.write_response(p, rng)
            labels = world.preference_labels(world.score(p, a), world.score(p, b), 0, rng)
            rows.append({"prompt": p, "response_a": a, "response_b": b,
                         **{f"raco_s_{k}": v for k, v in labels.items()}})
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(root / "world-tiny"), "train": str(root / "world_train.jsonl"),
            "eval": str(root / "world_eval.jsonl")}


def sharpened(model):
    """A changed copy of a model: its final norm scaled up, so every next-token distribution sharpens."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.norm.weight.mul_(20.0)
    return changed


# ----------------------------------------------------------------------------- measurements of models


def test_kl_is_exactly_zero_for_the_reference_against_itself_and_positive_for_a_changed_model(tiny_world):
    tokenizer, reference = train.load_model(tiny_world["model"], torch.device("cpu"))
    prompts = world.eval_prompts(6)
    same, _ = evaluation.evaluate_samples(reference, tokenizer, prompts, 3, 0.6, seed=0, reference=reference,
                                          max_new_tokens=16)
    assert same["kl"] == 0.0 and same["kl_se"] == 0.0
    changed, _ = evaluation.evaluate_samples(sharpened(reference), tokenizer, prompts, 3, 0.6, seed=0,
                                             reference=reference, max_new_tokens=16)
    assert changed["kl"] > 3 * changed["kl_se"] > 0
    assert set(world.OBJECTIVES) | {"well_formed", "words", "kl"} <= set(changed)


def test_sampled_logps_match_an_unpadded_forward_up_to_the_first_eos(tiny_world):
    tokenizer, model = train.load_model(tiny_world["model"], torch.device("cpu"))
    prompts = world.eval_prompts(5)  # prompts of 3 to 5 facts: different lengths, so left padding is exercised
    texts, batches = evaluation.sample(model, tokenizer, prompts, 2, 1.0, max_new_tokens=30, seed=3, batch_size=3)
    logps, k = evaluation.sampled_logps(model, batches, rows_per_forward=4), 0  # batches of 6 rows: chunks 4 + 2
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


def test_reference_against_itself_has_zero_margins_and_batching_changes_nothing(tiny_world):
    tokenizer, reference = train.load_model(tiny_world["model"], torch.device("cpu"))
    names = ["quality", "conciseness"]
    pairs, _ = data.load_pairs(tiny_world["eval"], "auto", names, tokenizer)
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
            tokens = dpo.tokenize_pairs(tokenizer, [p.prompt], [p.response_a], [p.response_b])
            pa, pb, _, _ = dpo.completion_logps(policy, tokens)
            ra, rb, _, _ = dpo.completion_logps(reference, tokens)
            if p.signs[i]:
                signed.append(cfg.beta * p.signs[i] * ((pa - pb) - (ra - rb)).item())
        assert batched[name]["accuracy"] == pytest.approx(sum(s > 0 for s in signed) / len(signed))
        assert batched[name]["margin"] == pytest.approx(sum(signed) / len(signed), abs=1e-5)


def test_reward_scores_equal_a_direct_forward_of_each_text(reward_model_dir):
    (tokenizer, model), = evaluation.load_reward_models(f"good={reward_model_dir}", torch.device("cpu")).values()
    prompts = ["question hello", "question", "hello world question"]
    responses = ["good answer", "bad long long long answer", "short"]
    scores = evaluation.reward_scores(model, tokenizer, prompts, responses, batch_size=2)
    direct = LlamaForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for p, r, s in zip(prompts, responses, scores):
        ids = word_tokenizer()(f"{p} {r}", return_tensors="pt")["input_ids"]
        assert s == pytest.approx(direct(input_ids=ids).logits[0, 0].item(), abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3


def test_checkpoint_on_real_style_data_is_scored_by_reward_models(tiny_model_dir, tiny_pairs, reward_model_dir, tmp_path):
    run = tmp_path / "run"
    train.main(train.parse_args(["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "2",
                                 "--batch-size", "4", "--lr", "1e-2", "--out", str(run)]))
    result = evaluation.main(["--checkpoint", str(run), "--data", tiny_pairs, "--split", "train",
                              "--reward-models", f"good={reward_model_dir}", "--samples", "3",
                              "--max-new-tokens", "6"])
    assert (run / "eval.json").read_text() == json.dumps(result, indent=2)
    assert set(result["pairs"]) == {"good", "short"} and result["pairs"]["short"]["pairs"] == 4
    assert result["pairs"]["good"]["accuracy"] == 1.0  # trained for 2 steps on exactly these pairs
    policy = result["samples"]["policy"]
    assert policy["samples"] == 3 and {"good", "good_se", "tokens", "kl"} <= set(policy)
    assert "quality" not in policy  # not the world: no exact scores
    assert result["samples"]["reference"]["kl"] == 0.0


# ----------------------------------------------------------------------------- the sweep


def test_pareto_sweep_writes_every_row_table_and_figure_and_reuses_runs(tiny_world, tmp_path, capsys):
    out = tmp_path / "pareto"
    flags = ["--pareto", "--quick", "--model", tiny_world["model"], "--data", tiny_world["train"], "--methods",
             "lw,raco", "--sweep", "0.2,0.8", "--seeds", "0,1", "--steps", "2", "--prompts", "3", "--samples", "2",
             "--pairs", "12", "--max-new-tokens", "12", "--out", str(out)]
    rows, stats = evaluation.main(flags)
    with open(out / "pareto.csv") as f:
        saved = list(csv.DictReader(f))
    assert [(r["method"], r["w_quality"], r["seed"]) for r in saved] == [
        ("reference", "nan", "0"), ("reference", "nan", "1"),
        ("lw", "0.2", "0"), ("lw", "0.8", "0"), ("raco", "0.2", "0"), ("raco", "0.8", "0"),
        ("lw", "0.2", "1"), ("lw", "0.8", "1"), ("raco", "0.2", "1"), ("raco", "0.8", "1")]
    for key in ("quality", "quality_se", "conciseness", "faithfulness", "well_formed", "words", "kl", "kl_se",
                "pair_accuracy_quality", "pair_margin_conciseness", "w_conciseness", "train_s"):
        assert key in saved[0], key
    assert all(r["kl"] == "0.0" for r in saved[:2])  # the reference against itself
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "pareto.md").read_text()
    assert "| lw |" in report and "| raco |" in report and "**raco vs lw**" in report
    assert "reference point (quality, conciseness) = (0.0, 0.0)" in report
    for s, seed in enumerate((0, 1)):  # the statistics are those of the rows
        points = [(r["quality"], r["conciseness"]) for r in rows if (r["method"], r["seed"]) == ("raco", seed)]
        assert stats["hypervolume"]["raco"][s] == pytest.approx(hypervolume_2d(points, (0, 0)))
    mtime = os.path.getmtime(out / "runs" / "raco-w0.2-s1" / "summary.json")
    capsys.readouterr()
    again, _ = evaluation.main(flags)  # an interrupted or repeated sweep trains nothing twice
    assert "reused" in capsys.readouterr().out and json.dumps(again) == json.dumps(rows)
    assert os.path.getmtime(out / "runs" / "raco-w0.2-s1" / "summary.json") == mtime
    later = time.time()  # the world rebuilt at the same path after the runs: they are stale
    os.utime(os.path.join(tiny_world["model"], "config.json"), (later, later))
    evaluation.main(flags)
    assert "reused" not in capsys.readouterr().out
    assert os.path.getmtime(out / "runs" / "raco-w0.2-s1" / "summary.json") > mtime


# ----------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    ([], "expected --checkpoint DIR (one policy) or --pareto (the sweep)"),
    (["--checkpoint", "no/such/run"], "--checkpoint: no/such/run: expected a train.py output with summary.json "
                                      "and policy/"),
    (["--pareto", "--methods", "lw,adam"], "--methods: expected some of lw, cagrad, raco, mgda, pcgrad, amopo, "
                                           "got 'lw,adam'"),
    (["--pareto", "--sweep", "0,1"], "--sweep: expected two or more distinct weights of quality in (0, 1), got '0,1'"),
    (["--pareto", "--seeds", "a"], "--sweep, --seeds: expected comma-separated numbers, got '0.1,0.3,0.5,0.7,0.9', "
                                   "'a'"),
    (["--pareto", "--model", "no/such/model"], "no/such/model: not found; the sweep runs on the embedded world "
                                               "(python world.py build)"),
    (["--samples", "0", "--checkpoint", "x"], "--samples: expected a positive integer, got 0"),
    (["--temperature", "0", "--pareto"], "--temperature: expected a positive number, got 0.0"),
    (["--prompts", "many"], "argument --prompts: invalid int value: 'many'"),
    (["--colour"], "unrecognized arguments: --colour"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(flags, message):
    with pytest.raises(train.UsageError) as error:
        evaluation.main(flags)
    assert str(error.value) == message


def test_bad_checkpoint_inputs_name_the_flag(tiny_model_dir, tiny_pairs, reward_model_dir, tmp_path):
    run = tmp_path / "run"
    train.main(train.parse_args(["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "1",
                                 "--batch-size", "4", "--out", str(run)]))
    cases = [([], f"--data: the policy was trained on {tiny_pairs}; name its held-out pairs with --data"),
             (["--data", "missing.jsonl"], "missing.jsonl: no such file or directory"),
             (["--data", tiny_pairs, "--reference", "./no/model"], "--reference: ./no/model: no such directory"),
             (["--data", tiny_pairs, "--reward-models", "good"],
              "--reward-models: expected name=PATH_OR_ID[,name=PATH_OR_ID...], got 'good'"),
             (["--data", tiny_pairs, "--reward-models", f"good={tiny_model_dir}x"], None)]
    for flags, message in cases:
        with pytest.raises(train.UsageError) as error:
            evaluation.main(["--checkpoint", str(run), *flags])
        assert message is None or str(error.value) == message
        assert "\n" not in str(error.value)


def test_command_line_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "eval.py", "--checkpoint", "no/such/run"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --checkpoint: no/such/run: expected a train.py output with summary.json "
                                     "and policy/")
