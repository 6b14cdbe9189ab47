"""train.py end to end: bad input gets one line and exit code 2, the hub-format path, and a run that improves."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*flags):
    return train.main(train.parse_args(list(flags)))


def test_hub_format_model_trains_and_saves_loadable_policy(tiny_model_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    summary = run("--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "4",
                  "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-2", "--log-every", "2", "--out", str(out))
    assert summary["objectives"] == ["good", "short"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    for key in ("good/loss", "short/loss", "good/rewards/accuracies", "a/good", "p/short", "p_clipped/good", "rho",
                "cos/good-short", "grad_norm/short", "lr"):
        assert key in lines[-1], key
    saved = json.loads((out / "summary.json").read_text())
    assert saved["config"]["steps"] == 4 and saved["weights"] == [0.5, 0.5]
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [not torch.equal(p, q) for p, q in zip(policy.parameters(), reference.parameters())]
    assert any(changed)  # it trained, and what was saved is the trained policy
    # the DPO margin moved the way every label asks: y_a (preferred by both objectives or tied) gained on y_b
    assert lines[-1]["good/rewards/margins"] > 0


BAD_INPUTS = [
    (["--method", "adam"], "--method: unknown method 'adam'; expected one of lw, cagrad, raco, mgda, pcgrad, amopo"),
    (["--c", "1.0"], "--c: expected a value in [0, 1), got 1.0"),
    (["--weights", "0.5,-0.5"], "--weights: expected non-negative weights with a positive sum, got '0.5,-0.5'"),
    (["--weights", "0,0"], "--weights: expected non-negative weights with a positive sum, got '0,0'"),
    (["--weights", "0.2,0.3,0.5"], "--weights: got 3 weights for 2 objectives"),
    (["--weights", "a,b"], "--weights: expected comma-separated numbers, got 'a,b'"),
    (["--objectives", "good,kind"], "{pairs}: unknown objective 'kind'; available: good, short"),
    (["--model", "./no/such/model"], "--model: ./no/such/model: no such directory"),
    (["--data", "missing.jsonl"], "missing.jsonl: no such file or directory"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(flags, message, tiny_model_dir, tiny_pairs, tmp_path):
    args = ["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--out", str(tmp_path / "run")]
    with pytest.raises(train.INPUT_ERRORS) as error:
        run(*args, *flags)
    assert str(error.value) == message.format(pairs=tiny_pairs)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_bad_data_lines_are_reported_with_their_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hello", "response_a": "good", "response_b": "bad", "raco_s_good": 1}\n{oops\n')
    with pytest.raises(train.INPUT_ERRORS, match=r"bad.jsonl line 2: not valid JSON"):
        run("--model", tiny_model_dir, "--data", str(bad), "--objectives", "", "--weights", "1",
            "--out", str(tmp_path / "run"))


def test_command_line_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--c", "2", "--out", str(tmp_path / "run")], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --c: expected a value in [0, 1), got 2.0"
    assert not (tmp_path / "run").exists()


def test_lora_trains_adapters_only_and_saves_a_merged_model(tiny_model_dir, tiny_pairs, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    run("--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "3", "--batch-size", "4",
        "--lr", "5e-2", "--lora-r", "4", "--log-every", "1", "--out", str(out))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # step 1 is measured before any update: the adapters start at zero, so the policy equals the reference
    assert lines[0]["good/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert lines[-1]["good/rewards/margins"] > 0
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")  # plain transformers: the adapters were merged
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert [n for n, _ in policy.named_parameters()] == [n for n, _ in reference.named_parameters()]
    changed = {n for (n, p), (_, q) in zip(policy.named_parameters(), reference.named_parameters())
               if not torch.equal(p, q)}
    assert changed and not any("embed" in n or "norm" in n for n in changed)  # only the linear layers moved


@pytest.mark.slow
def test_training_on_the_embedded_world_beats_the_reference(tmp_path):
    """The shipped model and pairs: a short RACO run raises the weighted exact score on held-out prompts."""
    summary = run("--weights", "0.8,0.2", "--steps", "60", "--eval-prompts", "48", "--out", str(tmp_path / "run"))
    before, after = summary["eval"]["reference"], summary["eval"]["policy"]
    assert after["weighted"] > before["weighted"] + 0.03, (before, after)
    assert after["quality"] > before["quality"]  # the objective with the larger weight moved the most
    assert after["well_formed"] >= 0.95
