"""train.py end to end: bad input gets one line and exit code 2, the hub-format path, and a run that improves."""

import importlib.machinery
import json
import os
import subprocess
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM

import train
import world
from harness import command_line, reporting
from harness.checks import parse_weights
from harness.metrics import front_gain_2d
from tiny import ROOT


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
    assert saved["config"]["steps"] == 4 and saved["weights"] == pytest.approx([0.8, 0.2])
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [not torch.equal(p, q) for p, q in zip(policy.parameters(), reference.parameters())]
    assert any(changed)  # it trained, and what was saved is the trained policy
    # the DPO margin moved the way every label asks: y_a (preferred by both objectives or tied) gained on y_b
    assert lines[-1]["good/rewards/margins"] > 0


# Checked before anything is loaded: flags, and an --out that cannot be written.
UP_FRONT = [
    (["--method", "adam"], "--method: unknown method 'adam'; expected one of lw, cagrad, raco, mgda, pcgrad, amopo"),
    (["--c", "1.0"], "--c: expected a value in [0, 1), got 1.0"),
    (["--weights", "0.5,-0.5"], "--weights: expected finite non-negative weights with a positive sum, got '0.5,-0.5'"),
    (["--weights", "0,0"], "--weights: expected finite non-negative weights with a positive sum, got '0,0'"),
    (["--weights", "1,inf"], "--weights: expected finite non-negative weights with a positive sum, got '1,inf'"),
    (["--weights", "a,b"], "--weights: expected comma-separated numbers, got 'a,b'"),
    (["--beta", "inf"], "--beta: invalid value inf (see --help)"),
    (["--lr", "nan"], "--lr: invalid value nan (see --help)"),
    (["--log-every", "0"], "--log-every: invalid value 0 (see --help)"),
    (["--max-grad-norm", "nan"], "--max-grad-norm: invalid value nan (see --help)"),
    (["--max-grad-norm", "-1"], "--max-grad-norm: invalid value -1.0 (see --help)"),
    (["--eval-prompts", "-5"], "--eval-prompts: invalid value -5 (see --help)"),
    (["--save-every", "-1"], "--save-every: invalid value -1 (see --help)"),
    (["--fsdp"], "--fsdp: invalid value True (launch with torchrun)"),
    (["--gram-layers", "1", "--grad-accum", "2"], "--gram-layers: solves per micro-batch; with --grad-accum > 1 pass "
                                                  "--solve-per micro_batch"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--out", "{file}"], "--out: {file} is a file, not a directory"),
    (["--out", "{file}/run"], "--out: {file}/run lies under {file}, which is not a directory"),
    (["--out", ""], "--out: empty; expected a directory"),
    (["--out", "{out}/" + "x" * 300], "--out: cannot write to {out}/" + "x" * 300 + ": File name too long"),
    (["--seed", "-1"], "--seed: invalid value -1 (see --help)"),
    (["--seed", str(2 ** 63)], f"--seed: invalid value {2 ** 63} (see --help)"),
    (["--resume"], "--resume: {out} holds no run to resume"),
    (["--max-length", "1"], "--max-length: invalid value 1 (see --help)"),
    (["--max-length", "100"], "--max-prompt-length: 192, but a prompt must keep at least one token and leave one to "
                              "the response within --max-length 100"),
    (["--weight-decay", "1e6"], "--weight-decay: 1e+06 with --lr 0.0005 multiplies every weight by 1 - lr x "
                                "weight_decay = -499 at each step; expected lr x weight_decay < 1"),
    (["--lora-alpha", "0"], "--lora-alpha: invalid value 0 (see --help)"),
    (["--lora-alpha", "-8", "--lora-r", "4"], "--lora-alpha: invalid value -8 (see --help)"),
]
# Checked with the tokenizer and the data, before the weights load.
BEFORE_THE_WEIGHTS = [
    (["--weights", "0.2,0.3,0.5"], "--weights: got 3 weights for 2 objectives"),
    (["--objectives", "good,kind"], "{pairs}: unknown objective 'kind'; available: good, short"),
    (["--model", "./no/such/model"], "--model: ./no/such/model: no such directory"),
    (["--data", "missing.jsonl"], "missing.jsonl: no such file or directory"),
    (["--batch-size", "16"], "--data: 8 pairs, fewer than one batch of 16"),
]
# Checked once the model is loaded, before any training.
AFTER_LOADING = [
    (["--gram-layers", "2", "--batch-size", "4"], "--gram-layers: 2, but the model has 1 transformer blocks"),
]


@pytest.fixture
def failing_load(monkeypatch):
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(train, "load_model", load_model)


def check_one_line(flags, message, tiny_model_dir, tiny_pairs, tmp_path):
    out, file = tmp_path / "run", tmp_path / "a-file"
    file.write_text("not a directory")
    fill = lambda text: text.format(pairs=tiny_pairs, file=file, out=out)  # noqa: E731
    args = ["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--out", str(out)]
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        run(*args, *map(fill, flags))
    assert str(error.value) == fill(message)
    assert not out.exists() and file.read_text() == "not a directory"  # nothing written, nothing clobbered


@pytest.mark.parametrize("flags,message", UP_FRONT)
def test_bad_flags_are_one_clear_line_before_anything_loads(flags, message, tiny_model_dir, tiny_pairs, tmp_path,
                                                            failing_load):
    check_one_line(flags, message, tiny_model_dir, tiny_pairs, tmp_path)


@pytest.mark.parametrize("flags,message", BEFORE_THE_WEIGHTS)
def test_bad_data_is_one_clear_line_before_the_weights_load(flags, message, tiny_model_dir, tiny_pairs, tmp_path,
                                                            failing_load):
    check_one_line(flags, message, tiny_model_dir, tiny_pairs, tmp_path)


@pytest.mark.parametrize("flags,message", AFTER_LOADING)
def test_bad_inputs_are_one_clear_line_before_training(flags, message, tiny_model_dir, tiny_pairs, tmp_path):
    check_one_line(flags, message, tiny_model_dir, tiny_pairs, tmp_path)


def test_an_unwritable_out_is_refused_before_loading(tmp_path, failing_load):
    if os.geteuid() == 0:  # root writes into a mode-500 directory, but no user writes into the kernel's /sys
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("needs /sys (Linux) when run as root")
        target, reason = "/sys/kernel/raco-run", "Operation not permitted"
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        target, reason = str(tmp_path / "locked" / "run"), "Permission denied"
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        run("--out", target)
    assert str(error.value) == f"--out: cannot write to {target}: {reason}"


def test_bad_data_lines_are_reported_with_their_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hello", "response_a": "good", "response_b": "bad", "raco_s_good": 1}\n{oops\n')
    with pytest.raises(command_line.INPUT_ERRORS, match=r"bad.jsonl line 2: not valid JSON"):
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
def test_training_on_the_embedded_world_beats_the_reference(tmp_path, capsys):
    """The shipped model and pairs: a short RACO run raises the weighted exact score on held-out prompts."""
    summary = run("--weights", "0.8,0.2", "--steps", "60", "--eval-prompts", "48", "--out", str(tmp_path / "run"))
    before, after = summary["eval"]["reference"], summary["eval"]["policy"]
    # each model's first answer to the same held-out prompts, printed under the table
    printed = capsys.readouterr().out.split("the first response of each model to the same held-out prompts:\n")[1]
    assert [e["prompt"] for e in before["examples"]] == [e["prompt"] for e in after["examples"]] \
        == world.eval_prompts(48)[:6]
    for reference, policy in list(zip(before["examples"], after["examples"]))[:3]:
        assert (f"{reference['prompt']}\n  reference       {reference['response']}\n"
                f"  trained policy  {policy['response']}\n") in printed
    assert after["weighted"] > before["weighted"] + 0.03, (before, after)
    assert after["quality"] > before["quality"]  # the objective with the larger weight moved the most
    assert after["well_formed"] >= 0.95
    # the distance it moved, and how far the exact front still is, measured as harness/sampling.score_on_world
    # defines them
    assert before["kl"] == 0.0 and after["kl"] > 3 * after["kl_se"] > 0
    front = [v[:2] for v in world.exact_front(["quality", "conciseness"], world.eval_prompts(48))]
    for scores in (before, after):
        assert scores["to_front"] == pytest.approx(front_gain_2d((scores["quality"], scores["conciseness"]), front))
        assert scores["to_front"] > 0  # neither reaches the exact front


@pytest.fixture(scope="module")
def no_bos_model_dir(tmp_path_factory):
    """A tiny model whose tokenizer adds no BOS, as Qwen's does not."""
    from tiny import tiny_llama, word_tokenizer
    path = tmp_path_factory.mktemp("no-bos")
    tiny_llama().save_pretrained(path)
    word_tokenizer(bos=False).save_pretrained(path)
    return str(path)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_an_empty_prompt_without_bos_is_refused_with_its_line(no_bos_model_dir, tmp_path):
    rows = [{"prompt": "hello", "response_a": "good", "response_b": "bad", "raco_s_good": 1}] * 3
    data = write_rows(tmp_path / "pairs.jsonl", rows + [dict(rows[0], prompt="")])
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        run("--model", no_bos_model_dir, "--data", data, "--weights", "1", "--batch-size", "2",
            "--out", str(tmp_path / "run"))
    assert str(error.value) == (f"{data} line 4: empty prompt, and the tokenizer adds no BOS: the first response "
                                "token would have nothing to be predicted from")


def test_pairs_that_teach_nothing_are_warned_about(tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": "hello", "response_a": "good", "response_b": "bad", "raco_s_good": 1, "raco_s_short": 0},
            {"prompt": "hello", "response_a": "good", "response_b": "good", "raco_s_good": -1, "raco_s_short": 0}]
    data = write_rows(tmp_path / "pairs.jsonl", rows * 2)
    run("--model", tiny_model_dir, "--data", data, "--batch-size", "2", "--steps", "1", "--eval-prompts", "0",
        "--out", str(tmp_path / "run"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 2 of 4 pairs have identical responses and teach nothing (first: {data} line 2)",
                        "warning: objective 'short' is a tie on every pair: its loss is constant and its gradient "
                        "zero"]


def test_data_other_than_the_worlds_defaults_to_its_own_objectives(tiny_model_dir, tmp_path):
    rows = [{"prompt": "question", "response_0": "good answer", "response_1": "bad answer",
             "better_response_id": i % 2, "safer_response_id": 0} for i in range(4)]
    summary = run("--model", tiny_model_dir, "--data", write_rows(tmp_path / "pku_train.jsonl", rows),
                  "--batch-size", "2", "--steps", "1", "--eval-prompts", "0", "--out", str(tmp_path / "run"))
    assert summary["objectives"] == ["helpful", "harmless"]


def test_the_worlds_data_defaults_to_quality_and_conciseness(tiny_world, tmp_path):
    summary = run("--model", tiny_world["model"], "--data", tiny_world["train"], "--batch-size", "8", "--steps", "1",
                  "--eval-prompts", "0", "--out", str(tmp_path / "run"))
    assert summary["objectives"] == ["quality", "conciseness"]
    summary = run("--model", tiny_world["model"], "--data", tiny_world["train"], "--batch-size", "8", "--steps", "1",
                  "--eval-prompts", "0", "--objectives", "faithfulness,quality", "--out", str(tmp_path / "three"))
    assert summary["objectives"] == ["faithfulness", "quality"]


@pytest.mark.parametrize("extra", [[], ["--lora-r", "4"]], ids=["full", "lora"])
def test_precomputed_reference_log_probs_train_the_same_policy(extra, tiny_model_dir, tiny_pairs, tmp_path):
    if extra:
        pytest.importorskip("peft")
    common = ["--model", tiny_model_dir, "--data", tiny_pairs, "--batch-size", "4", "--steps", "6", "--lr", "1e-2",
              "--log-every", "1", "--eval-prompts", "0", "--save-every", "0", *extra]
    run(*common, "--out", str(tmp_path / "online"))
    cached = run(*common, "--precompute-ref", "--out", str(tmp_path / "cached"))
    (cache,) = (tmp_path / "cached").glob("reference_logps-*.safetensors")
    online = [json.loads(x) for x in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    lines = [json.loads(x) for x in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(online, lines, strict=True):  # the same losses every step, to rounding (batches pad differently)
        assert a["good/loss"] == pytest.approx(b["good/loss"], rel=1e-5)
        assert a["short/loss"] == pytest.approx(b["short/loss"], rel=1e-5)
    policy_online = AutoModelForCausalLM.from_pretrained(tmp_path / "online" / "policy")
    policy_cached = AutoModelForCausalLM.from_pretrained(tmp_path / "cached" / "policy")
    for p, q in zip(policy_online.parameters(), policy_cached.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)
    mtime = cache.stat().st_mtime_ns  # rerun into the same --out: the cache is read, not computed again
    run(*common, "--precompute-ref", "--out", str(tmp_path / "cached"), "--overwrite", "--steps", "7")
    assert cache.stat().st_mtime_ns == mtime and len(list((tmp_path / "cached").glob("reference_logps-*"))) == 1
    run(*common, "--precompute-ref", "--out", str(tmp_path / "cached"), "--overwrite", "--max-length", "64",
        "--max-prompt-length", "32")  # other tokenisation settings: another cache, never the stale one
    assert len(list((tmp_path / "cached").glob("reference_logps-*"))) == 2
    assert cached["config"]["precompute_ref"]


def test_weights_that_overflow_when_summed_are_normalised():
    assert parse_weights("1e308,1e308", 2) == [0.5, 0.5]
    assert parse_weights("3,1", 2) == [0.75, 0.25]


def test_no_module_forces_offline_mode_on_import():
    """A user's hub data set or reward model must not be forced offline by an import (world.py once did this)."""
    modules = [f[:-3] for f in sorted(os.listdir(ROOT)) if f.endswith(".py")]
    modules += [f"{folder}.{f[:-3]}" for folder in ("harness", "experiments")
                for f in sorted(os.listdir(os.path.join(ROOT, folder))) if f.endswith(".py") and f != "__init__.py"]
    assert len(modules) > 20  # the core, the harness and the experiments
    code = f"import os, {', '.join(modules)}; print(os.environ.get('HF_HUB_OFFLINE'))"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_model_dir, tiny_pairs, tmp_path):
    """Non-reentrant checkpointing recomputes the forward in each objective's backward: the same direction."""
    common = ["--model", tiny_model_dir, "--data", tiny_pairs, "--objectives", "", "--steps", "3", "--batch-size",
              "4", "--lr", "1e-2", "--eval-prompts", "0", "--save-every", "0", "--log-every", "1"]
    run(*common, "--out", str(tmp_path / "plain"))
    run(*common, "--gradient-checkpointing", "--out", str(tmp_path / "checkpointed"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "policy")
    checkpointed = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpointed" / "policy")
    for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    lines = [json.loads(x) for x in (tmp_path / "checkpointed" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["good/rewards/margins"] > 0 and "a/good" in lines[-1]


# --- what a user sees: threads, curves, reporting backends, unknown tokens --------------------------------------------

def test_threads_default_to_one_and_the_flag_sets_them(tiny_model_dir, tiny_pairs, tmp_path):
    assert train.Config().threads == 1
    try:
        run("--model", tiny_model_dir, "--data", tiny_pairs, "--steps", "1", "--batch-size", "4", "--threads", "2",
            "--eval-prompts", "0", "--out", str(tmp_path / "run"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest.py)


@pytest.mark.parametrize("command", ["eval.py", "toy_pareto.py", "experiments/pareto.py", "experiments/frontier.py",
                                     "experiments/bench.py", "experiments/world_build.py"])
def test_every_command_takes_the_same_threads_flag(command):
    result = subprocess.run([sys.executable, command, "--help"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and "--threads THREADS" in result.stdout and "CPU threads for torch" in \
        " ".join(result.stdout.split())


def test_curves_are_drawn_from_metrics_jsonl(tiny_model_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    run("--model", tiny_model_dir, "--data", tiny_pairs, "--steps", "4", "--batch-size", "4", "--log-every", "1",
        "--eval-prompts", "0", "--out", str(out))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    panels = reporting.curve_series(lines, ["good", "short"])
    assert panels["DPO loss per objective"]["short"] == ([1, 2, 3, 4], [line["short/loss"] for line in lines])
    assert panels["coefficients a of d = sum_i a_i g_i"]["a/good"][1] == [line["a/good"] for line in lines]
    assert panels["the dual p and the clipped p~ = min(p, w)"]["p~/short"][1] == [line["p_clipped/short"]
                                                                                  for line in lines]
    assert panels["cosine between the objectives' gradients"]["good-short"][1] == [line["cos/good-short"]
                                                                                    for line in lines]


def test_report_to_tensorboard_logs_what_metrics_jsonl_logs(tiny_model_dir, tiny_pairs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    run("--model", tiny_model_dir, "--data", tiny_pairs, "--steps", "4", "--batch-size", "4", "--log-every", "2",
        "--eval-prompts", "0", "--report-to", "tensorboard", "--out", str(out))
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(events.Tags()["scalars"]) == {k for k in lines[0] if k != "step"}
    for key in ("good/loss", "a/short", "lr"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [2, 4]
        assert [e.value for e in logged] == pytest.approx([line[key] for line in lines], rel=1e-6)  # float32


def test_report_to_wandb_logs_what_metrics_jsonl_logs(tiny_model_dir, tiny_pairs, tmp_path, monkeypatch):
    logged, calls = [], {}

    class Run:
        def log(self, values, step):
            logged.append((step, values))

        def finish(self):
            calls["finish"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    fake = types.ModuleType("wandb")
    fake.init, fake.__spec__ = init, importlib.machinery.ModuleSpec("wandb", None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    run("--model", tiny_model_dir, "--data", tiny_pairs, "--steps", "4", "--batch-size", "4", "--log-every", "2",
        "--eval-prompts", "0", "--report-to", "wandb", "--out", str(out))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [(line["step"], {k: v for k, v in line.items() if k != "step"}) for line in lines]
    assert calls["finish"] and calls["init"]["config"]["steps"] == 4 and calls["init"]["dir"] == str(out)


def test_report_to_an_unknown_or_missing_backend_is_one_line(tiny_model_dir, tiny_pairs, tmp_path, monkeypatch):
    with pytest.raises(command_line.UsageError) as error:
        run("--report-to", "mlflow", "--out", str(tmp_path / "run"))
    assert str(error.value) == "--report-to: unknown backend 'mlflow'; expected none or some of tensorboard, wandb"
    monkeypatch.setattr(reporting.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(command_line.UsageError) as error:
        run("--report-to", "none,wandb", "--out", str(tmp_path / "run"))
    assert str(error.value) == "--report-to wandb needs the wandb package: pip install wandb"
    assert not (tmp_path / "run").exists()


def test_data_the_tokenizer_mostly_does_not_know_is_refused_unless_insisted(tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": "question hello", "response_a": "good answer", "response_b": "bad answer", "raco_s_good": 1}]
    english = [{**rows[0], "response_b": "an entirely different vocabulary here"}] * 4
    data = write_rows(tmp_path / "english.jsonl", english)  # 5 of each pair's 9 tokens unknown: 56%
    common = ["--model", tiny_model_dir, "--weights", "1", "--batch-size", "2", "--steps", "1", "--eval-prompts", "0"]
    with pytest.raises(command_line.UsageError) as error:
        run(*common, "--data", data, "--out", str(tmp_path / "refused"))
    assert str(error.value) == (f"--data: 56% of its tokens are unknown to the tokenizer of {tiny_model_dir} (<unk>): "
                                "the model would learn from placeholders; pass a --model whose tokenizer knows this "
                                "text, or --allow-unknown-tokens to train anyway")
    run(*common, "--data", data, "--allow-unknown-tokens", "--out", str(tmp_path / "insisted"))
    assert "warning: 55.6% of the data's tokens are unknown" in capsys.readouterr().err
    some = write_rows(tmp_path / "some.jsonl", rows * 3 + [{**rows[0], "response_b": "bad unknownword"}])
    run(*common, "--data", some, "--out", str(tmp_path / "warned"))  # 1 of 24 tokens
    assert "warning: 4.2% of the data's tokens are unknown to the tokenizer" in capsys.readouterr().err


def test_a_config_file_gives_the_flags_and_flags_beside_it_override(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"steps": 7, "weights": "0.5,0.5", "fsdp": False}))
    (tmp_path / "run.yaml").write_text("steps: 9\nlr: 0.001\n")
    cfg = train.parse_args(["--config", str(tmp_path / "run.json"), "--steps", "3"])
    assert (cfg.steps, cfg.weights, cfg.lr) == (3, "0.5,0.5", train.Config.lr)  # the flag beside it wins
    assert train.parse_args(["--config", str(tmp_path / "run.yaml")]).lr == 0.001
    assert train.parse_args(["--overwrite"]).overwrite and not train.parse_args(["--no-overwrite"]).overwrite
    for text, message in (('{"stepz": 2}', "unknown field 'stepz'"), ('{"steps": 2.5}', "field 'steps': expected int, "
                                                                                            "got 2.5"),
                          ("[1, 2]", "expected a mapping of flag names to values")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(command_line.UsageError) as error:
            train.parse_args(["--config", str(tmp_path / "bad.json")])
        assert str(error.value) == f"--config: {tmp_path / 'bad.json'}: {message}"
