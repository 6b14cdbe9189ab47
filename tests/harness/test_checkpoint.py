"""Runs that survive (checkpoint.py and train.py's loop): a run interrupted at any point -- by an exception, SIGINT or
SIGKILL -- and resumed ends bit-identical to one never interrupted; an --out never mixes two runs; a diverging run
stops with its last checkpoint intact; a full disk is one line, never a half-written checkpoint."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import train
from harness import checkpoints, command_line, run_directory
from tiny import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # one thread: the same sums in every process


def flags(tiny_model_dir, tiny_pairs, out, *extra):
    return ["--model", tiny_model_dir, "--data", tiny_pairs, "--batch-size", "4", "--eval-prompts", "0",
            "--lr", "1e-2", "--log-every", "2", "--out", str(out), *extra]


def parameters(out):
    return load_file(os.path.join(out, "policy", "model.safetensors"))


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_run(a, b):
    pa, pb = parameters(a), parameters(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)  # bit-identical
    ma, mb = metrics(a), metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] and ma == mb


@pytest.mark.parametrize("method, accumulation, extra", [("raco", "1", []), ("raco", "2", []), ("lw", "2", []),
                                                       ("raco", "1", ["--lora-r", "4"])])
def test_resume_after_an_exception_is_bit_identical(method, accumulation, extra, tiny_model_dir, tiny_pairs, tmp_path,
                                                    monkeypatch):
    if extra:
        pytest.importorskip("peft")
    common = ["--method", method, "--grad-accum", accumulation, "--steps", "12", "--save-every", "3",
              "--keep-checkpoints", "1", *extra]
    train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "whole", *common)))
    honest, calls = train.objective_losses, []

    def crash_in_step_8(*args):
        calls.append(1)
        if len(calls) > 7 * int(accumulation):
            raise RuntimeError("power cut")
        return honest(*args)

    monkeypatch.setattr(train, "objective_losses", crash_in_step_8)
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "cut", *common))
    with pytest.raises(RuntimeError, match="power cut"):
        train.main(args)
    assert [os.path.basename(c) for c in checkpoints.checkpoints(tmp_path / "cut")] == ["step-000006"]
    monkeypatch.setattr(train, "objective_losses", honest)
    summary = train.main(args)  # the same command again continues from step 6
    assert summary["resumed_from"].endswith("step-000006")
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


def wait_for(path, process, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def signal_run_command(tiny_model_dir, tiny_pairs, out):
    return [sys.executable, "train.py", *flags(tiny_model_dir, tiny_pairs, out, "--steps", "200", "--save-every", "20")]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tiny_pairs, tmp_path_factory):
    """The run the signal tests interrupt, run once to the end without interruption."""
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(signal_run_command(tiny_model_dir, tiny_pairs, out), cwd=ROOT, env=ENV, check=True,
                   capture_output=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_resume_after_a_signal_is_bit_identical(how, tiny_model_dir, tiny_pairs, tmp_path, uninterrupted):
    command = signal_run_command(tiny_model_dir, tiny_pairs, tmp_path / "cut")
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "cut" / "checkpoints" / "step-000020", process)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (128 + how if how != signal.SIGKILL else -signal.SIGKILL)
    assert "Traceback" not in stderr
    stopped_at = int(checkpoints.checkpoints(tmp_path / "cut")[-1].rsplit("-", 1)[1])
    assert 20 <= stopped_at < 200 and not (tmp_path / "cut" / "summary.json").exists()
    if how != signal.SIGKILL:  # the current step finished and was saved: one line says where and how to go on
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"{how.name} at step {stopped_at}: checkpoint saved in ")
        assert last.endswith("; run the same command again to continue from it")  # pareto.py's too: no --resume
    resumed = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {tmp_path / 'cut' / 'checkpoints' / f'step-{stopped_at:06d}'}" in resumed.stderr
    assert_same_run(uninterrupted, tmp_path / "cut")


def test_an_out_holding_another_run_is_refused_unless_overwrite(tiny_model_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "0")))
    before = parameters(out)
    with pytest.raises(run_directory.RunError) as error:  # another learning rate: another run
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "0",
                                          "--lr", "5e-2")))
    assert str(error.value) == (f"--out: {out} holds another run (run.json, inputs.json, metrics.jsonl, policy, "
                                "summary.json); "
                                "pass --overwrite to replace it or --resume to continue it")
    assert all(torch.equal(before[k], v) for k, v in parameters(out).items())  # untouched
    with pytest.raises(command_line.INPUT_ERRORS):  # a bad flag with --overwrite costs the old run nothing either
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--overwrite",
                                          "--weights", "1,2,3")))
    assert all(torch.equal(before[k], v) for k, v in parameters(out).items())
    train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "0",
                                      "--lr", "5e-2", "--overwrite")))
    assert json.loads((out / "run.json").read_text())["lr"] == 5e-2
    assert any(not torch.equal(before[k], v) for k, v in parameters(out).items())


@pytest.mark.parametrize("save_every", ["2", "0"])  # with checkpoints, and without any
def test_rerunning_a_finished_run_trains_nothing_and_removes_nothing(save_every, tiny_model_dir, tiny_pairs, tmp_path,
                                                                     monkeypatch, capsys):
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "4", "--save-every",
                                  save_every))
    first = train.main(args)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("loaded the model again"))
    monkeypatch.setattr(train, "objective_losses", lambda *a: pytest.fail("trained again"))
    again = train.main(args)  # the same command: the run is finished, its summary is reported as it was
    assert again["final"] == first["final"] and again["resumed_from"] is None
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()} == written
    assert "holds this run, finished: nothing to do" in capsys.readouterr().err
    with pytest.raises(run_directory.RunError, match="--resume: .* holds a run with other settings \\(steps\\)"):
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "8",
                                          "--save-every", "2", "--resume")))


def test_a_diverging_run_skips_its_bad_steps_then_stops_with_one_line(tiny_model_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    args = flags(tiny_model_dir, tiny_pairs, out, "--lr", "1e30", "--steps", "50", "--save-every", "1",
                 "--max-bad-steps", "3", "--log-every", "1")
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: stopped at step ") and "non-finite" in line and "--lr 1e+30" in line
    stopped = int(line.split("stopped at step ")[1].split(":")[0])
    logged = metrics(out)
    assert [m.get("skipped_steps") for m in logged[-3:]] == [1.0, 1.0, 1.0]  # the three skipped steps, logged
    kept = checkpoints.checkpoints(out)  # saved every step, but not while steps fail: the last one before them
    assert f"the last checkpoint, {kept[-1]}, is intact" in line and int(kept[-1].rsplit("-", 1)[1]) == stopped - 3
    state = torch.load(os.path.join(kept[-1], "trainer.pt"), weights_only=True)
    assert state["skipped"] == 0 and state["bad_steps"] == 0


def test_a_full_disk_is_one_line_and_leaves_no_half_written_checkpoint(tiny_model_dir, tiny_pairs, tmp_path):
    def small_files():  # every file this process writes is cut at 40 kB, as a full disk would cut it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", *flags(tiny_model_dir, tiny_pairs, out, "--steps", "4")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, preexec_fn=small_files)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: could not write to {out}: File too large"
    assert checkpoints.checkpoints(out) == [] and not (out / "policy").exists()


def test_the_same_run_stopped_before_its_first_checkpoint_starts_again(tiny_model_dir, tiny_pairs, tmp_path,
                                                                       monkeypatch):
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "4", "--save-every", "3"))
    honest = train.objective_losses
    monkeypatch.setattr(train, "objective_losses", lambda *a: (_ for _ in ()).throw(RuntimeError("power cut")))
    with pytest.raises(RuntimeError):
        train.main(args)
    assert (tmp_path / "run" / "run.json").exists() and checkpoints.checkpoints(tmp_path / "run") == []
    with pytest.raises(run_directory.RunError, match="has no complete checkpoint yet"):
        train.main(train.parse_args([*flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "4",
                                            "--save-every", "3"), "--resume"]))
    monkeypatch.setattr(train, "objective_losses", honest)
    assert train.main(args)["resumed_from"] is None  # nothing to resume: the same run from the start


def test_rerunning_a_finished_run_keeps_its_last_line(tiny_model_dir, tiny_pairs, tmp_path):
    # 5 steps logged every 2: lines for steps 2, 4 and 5; the last checkpoint is the run's end, at step 5
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "5", "--save-every", "2"))
    train.main(args)
    first = metrics(tmp_path / "run")
    assert [m["step"] for m in first] == [2, 4, 5]
    (tmp_path / "run" / "summary.json").unlink()  # as if killed after its final checkpoint, before the summary
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:  # and a line a kill cut short, as if written after
        f.write('{"step": 6, "good/lo')
    assert train.main(args)["resumed_from"].endswith("step-000005")  # the same command again: nothing left to run
    assert metrics(tmp_path / "run") == first


@pytest.mark.parametrize("damage", ["truncated trainer.pt", "no state metadata"])
def test_a_checkpoint_damaged_after_it_was_written_is_one_line_naming_it(damage, tiny_model_dir, tiny_pairs,
                                                                         tmp_path):
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "2", "--save-every", "2"))
    train.main(args)
    (tmp_path / "run" / "summary.json").unlink()  # as if killed after its final checkpoint, before the summary
    (latest,) = checkpoints.checkpoints(tmp_path / "run")
    if damage == "truncated trainer.pt":
        trainer = os.path.join(latest, "trainer.pt")
        os.truncate(trainer, os.path.getsize(trainer) // 2)
    else:
        os.remove(os.path.join(latest, "state", ".metadata"))
    with pytest.raises(run_directory.RunError) as error:
        train.main(args)  # the same command: it resumes from the damaged checkpoint
    message = str(error.value)
    assert message.startswith(f"--resume: {latest} cannot be read (") and "\n" not in message
    if damage == "no state metadata":  # found before torch.distributed.checkpoint logs its fallbacks
        assert "(FileNotFoundError: its state/.metadata is missing)" in message
    assert message.endswith("delete it to resume from the one before, or pass --overwrite")


def test_a_damaged_reference_cache_is_computed_again(tiny_model_dir, tiny_pairs, tmp_path, capsys):
    common = flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "2", "--precompute-ref")
    first = train.main(train.parse_args(common))
    (cache,) = (tmp_path / "run").glob("reference_logps-*.safetensors")
    intact = load_file(cache)["logps"].clone()  # not a view of the file that is about to be cut
    for damage in ("cut", "nan"):
        if damage == "cut":
            os.truncate(cache, 50)
        else:  # a whole file whose values cannot be log-probs
            save_file({"logps": torch.full_like(intact, float("nan"))}, cache)
        again = train.main(train.parse_args([*common, "--overwrite"]))
        assert f"warning: {cache} is damaged; computing the reference's log-probs again" in capsys.readouterr().err
        assert torch.equal(load_file(cache)["logps"], intact) and again["final"] == first["final"]


def test_a_run_whose_steps_were_mostly_skipped_saves_no_policy_and_fails(tiny_model_dir, tiny_pairs, tmp_path):
    # lr 1e30: the first update is finite but enormous, every later step non-finite; fewer than --max-bad-steps, but
    # 2 of 3: a policy 1e30 away from the start was saved and the run exited 0 with a warning
    out = tmp_path / "run"
    with pytest.raises(command_line.TrainingError) as error:
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--lr", "1e30", "--steps", "3",
                                          "--max-bad-steps", "10")))
    assert str(error.value) == ("2 of 3 steps were skipped for non-finite losses or gradients: the policy has "
                                "diverged (is --lr 1e+30 too high?); no policy was saved")
    assert not (out / "policy").exists() and not (out / "summary.json").exists()


def test_steps_skipped_at_the_end_of_a_run_are_never_silent(tiny_model_dir, tiny_pairs, tmp_path, capsys,
                                                            monkeypatch):
    honest, calls = train.objective_losses, []

    def nan_at_the_end(*args):  # the last two of five steps have a non-finite loss
        losses, logps, metrics = honest(*args)
        calls.append(1)
        return (losses * float("nan"), logps, metrics) if len(calls) > 3 else (losses, logps, metrics)

    monkeypatch.setattr(train, "objective_losses", nan_at_the_end)
    summary = train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "5",
                                                "--max-bad-steps", "10")))
    assert summary["skipped_steps"] == 2
    assert ("warning: 2 of 5 steps were skipped for non-finite losses or gradients, the last 2 in a row: the policy "
            "has likely diverged (is --lr 0.01 too high?); see skipped_steps in metrics.jsonl") \
        in capsys.readouterr().err


@pytest.mark.parametrize("how, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_outside_the_loop_is_one_line_saying_what_is_left(how, code, capsys):
    def loading_a_model():
        os.kill(os.getpid(), how)
        time.sleep(10)  # the signal arrives first
    # Ctrl-C as a terminal delivers it, also where pytest runs as a background job (which starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stop:
            command_line.run_command(loading_a_model, interrupted=lambda: "what is left")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.value.code == code and capsys.readouterr().err == "\ninterrupted: what is left\n"


def test_what_an_interrupt_leaves_names_this_runs_last_checkpoint(tiny_model_dir, tiny_pairs, tmp_path):
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, tmp_path / "run", "--steps", "4", "--save-every", "2"))
    config = vars(args).copy()
    assert run_directory.left_behind(config) == "no checkpoint of this run was saved"  # nothing yet
    train.main(args)
    latest = checkpoints.checkpoints(tmp_path / "run")[-1]
    assert run_directory.left_behind(config) == f"the last checkpoint, {latest}, is intact; run the same command " \
                                             "again to continue from it"
    assert "without --overwrite" in run_directory.left_behind({**config, "overwrite": True})
    assert run_directory.left_behind({**config, "lr": 1.0}) == "no checkpoint of this run was saved"  # another run's


def test_the_write_probe_refuses_what_the_writers_cannot_take(tmp_path):
    bad = str(tmp_path) + "/run-\udcff"  # a byte that is not UTF-8, as Python decodes it from a file name
    with pytest.raises(run_directory.RunError, match="is not valid UTF-8; rename it$"):
        run_directory.check_writable(bad)
    with pytest.raises(run_directory.RunError, match="^--out: empty; expected a directory$"):
        run_directory.check_writable("")


def test_the_write_probe_leaves_nothing_and_json_is_written_whole_and_strict(tmp_path):
    target = tmp_path / "new" / "deeper"
    run_directory.check_writable(str(target))
    assert os.listdir(tmp_path) == []  # the directories it made to try are gone
    run_directory.write_json(str(target / "eval.json"), {"accuracy": float("nan"), "se": [1.5, float("inf")]})
    assert json.loads((target / "eval.json").read_text()) == {"accuracy": None, "se": [1.5, None]}
    assert os.listdir(target) == ["eval.json"]  # no temporary file left


def test_a_run_started_into_an_out_another_is_writing_stops_and_leaves_it_alone(tiny_model_dir, tiny_pairs,
                                                                                 tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2")))
    before = sorted(os.listdir(out))
    with open(out / ".lock", "w") as held:  # as the first run's process holds it while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(run_directory.RunError) as error:
            train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--overwrite")))
    assert str(error.value) == f"--out: another run is writing to {out} right now; let it finish or pick another --out"
    assert sorted(os.listdir(out)) == before and (out / "summary.json").exists()  # nothing removed
