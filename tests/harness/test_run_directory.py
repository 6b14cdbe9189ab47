"""The run directory's promises under hostile timing and input (harness/run_directory.py, harness/run.py): nothing
lost, nothing mixed, nothing executed that the user did not write, and one line for every bad input."""
import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train
from harness import checkpoints, command_line, run_directory
from tiny import ROOT, crash_after, tiny_llama, word_tokenizer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def flags(model, data, out, *extra):
    return ["--model", model, "--data", data, "--batch-size", "4", "--eval-prompts", "0", "--lr", "1e-2",
            "--log-every", "2", "--out", str(out), *extra]


def parameters(out):
    return load_file(os.path.join(out, "policy", "model.safetensors"))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIRS = [{"prompt": "question hello", "response_a": "good answer", "response_b": "bad long long answer",
          "raco_s_good": 1, "raco_s_short": i % 2} for i in range(8)]


# --- nothing lost, nothing mixed -----------------------------------------------------------------------------------

def test_a_run_claims_its_out_before_any_work_so_a_second_run_started_meanwhile_is_refused(
        tiny_model_dir, tiny_pairs, tmp_path, monkeypatch):
    """Run A scores its reference before training; run B, started into the same fresh --out meanwhile, used to train
    to the end, and A then removed B's policy and summary and exited 0 as well."""
    out, refused = tmp_path / "run", []
    honest = train.world_scores

    def second_run_during_the_first_ones_evaluation(*args, **kwargs):
        if not refused:
            with pytest.raises(run_directory.RunError) as error:
                train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2")))
            refused.append(str(error.value))
        return honest(*args, **kwargs)

    monkeypatch.setattr(train, "world_scores", second_run_during_the_first_ones_evaluation)
    summary = train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2")))
    assert refused == [f"--out: another run is writing to {out} right now; let it finish or pick another --out"]
    assert summary["resumed_from"] is None and (out / "policy").is_dir() and (out / "summary.json").exists()


def test_a_held_out_is_refused_before_the_model_loads_and_left_as_it_was(tiny_model_dir, tiny_pairs, tmp_path,
                                                                         monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "fresh"
    out.mkdir()
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("loaded a model into a claimed --out"))
    with open(out / ".lock", "w") as held:  # another process's run, started a moment ago, holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(run_directory.RunError, match="another run is writing to"):
            train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2")))
    assert os.listdir(out) == [".lock"]  # nothing of the refused run


def test_an_out_inside_another_run_is_refused(tiny_model_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "1")))
    files = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(run_directory.RunError) as error:  # once trained into out/policy/, beside the weights
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out / "policy", "--steps", "1")))
    assert str(error.value) == (f"--out: {out / 'policy'} lies inside the run in {out}, whose files it would mix "
                                "with; pick a directory of its own")
    assert sorted(str(p) for p in out.rglob("*")) == files


def test_a_run_stopped_by_bad_input_leaves_no_trace_of_its_claim(tiny_model_dir, tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(command_line.INPUT_ERRORS):
        train.main(train.parse_args(flags(tiny_model_dir, str(tmp_path / "missing.jsonl"), out)))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("changed", ["data", "model"])
def test_a_resume_over_changed_inputs_is_refused_naming_what_changed(changed, tiny_model_dir, tmp_path, monkeypatch):
    model, data = tmp_path / "model", tmp_path / "pairs.jsonl"
    shutil.copytree(tiny_model_dir, model)
    write_rows(data, PAIRS)
    args = train.parse_args(flags(str(model), str(data), tmp_path / "run", "--steps", "6", "--save-every", "2"))
    honest = train.objective_losses
    monkeypatch.setattr(train, "objective_losses", crash_after(3, honest))  # in step 4
    with pytest.raises(RuntimeError, match="power cut"):
        train.main(args)
    monkeypatch.setattr(train, "objective_losses", honest)
    if changed == "data":  # the same path, relabelled
        write_rows(data, [dict(row, raco_s_good=-row["raco_s_good"]) for row in PAIRS])
    else:  # the same path, other weights
        tiny_llama(seed=7).save_pretrained(model, safe_serialization=True)
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        train.main(args)
    where = data if changed == "data" else model
    assert str(error.value) == (f"--out: {tmp_path / 'run'} holds this run, but the {changed} ({where}) changed since "
                                "it began; restore what it trained on to continue, or pass --overwrite to start again")
    assert [os.path.basename(c) for c in checkpoints.checkpoints(tmp_path / "run")] == ["step-000002"]


@pytest.mark.parametrize("field", ["prompt", "response_b"])
def test_a_lone_surrogate_is_one_line_before_overwrite_removes_anything(field, tiny_model_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2")))
    before = parameters(out)
    data = tmp_path / "surrogate.jsonl"  # valid JSON, but no text: UTF-8 cannot encode U+D800 on its own
    lines = [json.dumps(row) for row in PAIRS]
    lines[2] = lines[2].replace('"' + PAIRS[2][field] + '"', '"half \\ud800 a character"')
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        train.main(train.parse_args(flags(tiny_model_dir, str(data), out, "--steps", "2", "--overwrite")))
    assert str(error.value) == (f"{data} line 3: field '{field}' holds '\\ud800' at character 5, a lone surrogate "
                                "that is not text (expected valid Unicode)")
    assert all(torch.equal(before[k], v) for k, v in parameters(out).items()) and (out / "summary.json").exists()


def test_metrics_survive_a_second_kill_right_after_a_resume(tiny_model_dir, tiny_pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = flags(tiny_model_dir, tiny_pairs, out, "--steps", "12", "--save-every", "6")
    monkeypatch.setattr(train, "objective_losses", crash_after(7, train.objective_losses))  # in step 8
    with pytest.raises(RuntimeError):
        train.main(train.parse_args(args))
    logged = (out / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in logged.splitlines()] == [2, 4, 6]
    # the resume stalls in its first step and is killed: the lines of steps 2, 4 and 6 must still be on disk
    code = ("import sys, time, train\n"
            "def stall(*a):\n"
            "    print('STALLED', file=sys.stderr, flush=True)\n"
            "    time.sleep(600)\n"
            "train.objective_losses = stall\n"
            f"train.main(train.parse_args({args!r}))\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while "STALLED" not in process.stderr.readline():
        assert process.poll() is None and time.time() < deadline
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "metrics.jsonl").read_text() == logged


# --- nothing executed -----------------------------------------------------------------------------------------------

class Payload:
    """What a tampered pickle would run: here, a file written to prove it ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_checkpoint_is_refused_without_running_its_code(tiny_model_dir, tiny_pairs, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "EXECUTED"
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "2"))
    train.main(args)
    (out / "summary.json").unlink()  # as if killed after its last checkpoint: the same command resumes from it
    (latest,) = checkpoints.checkpoints(out)
    with open(os.path.join(latest, "state", ".metadata"), "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(run_directory.RunError) as error:
        train.main(args)
    assert not marker.exists()
    assert str(error.value) == (f"--resume: {latest} cannot be read (UnpicklingError: its state/.metadata cannot be "
                                f"read: state/.metadata refers to {os.system.__module__}.system, which checkpoint "
                                "metadata never holds: it was not written by this code); delete it to resume from "
                                "the one before, or pass --overwrite")


def test_a_tampered_trainer_state_is_one_line_that_never_suggests_unsafe_loading(tiny_model_dir, tiny_pairs,
                                                                                   tmp_path):
    out, marker = tmp_path / "run", tmp_path / "EXECUTED"
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "2"))
    train.main(args)
    (out / "summary.json").unlink()
    (latest,) = checkpoints.checkpoints(out)
    torch.save({"step": Payload(marker)}, os.path.join(latest, "trainer.pt"))
    with pytest.raises(run_directory.RunError) as error:
        train.main(args)
    assert str(error.value) == (f"--resume: {latest} cannot be read (UnpicklingError: its trainer.pt holds more than "
                                f"a trainer state ({os.system.__module__}.system): it was not written by this code); "
                                "delete it to resume from the one before, or pass --overwrite")
    assert not marker.exists()


def test_a_truncated_metadata_is_one_line_without_logged_tracebacks(tiny_model_dir, tiny_pairs, tmp_path, caplog):
    out = tmp_path / "run"
    args = train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "2"))
    train.main(args)
    (out / "summary.json").unlink()
    metadata = os.path.join(checkpoints.checkpoints(out)[-1], "state", ".metadata")
    os.truncate(metadata, os.path.getsize(metadata) // 2)
    caplog.clear()
    with pytest.raises(run_directory.RunError, match="pickle data was truncated"):
        train.main(args)
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []  # torch logged none


def test_a_model_with_code_of_its_own_is_refused_without_running_it(tmp_path, tiny_pairs):
    model, marker = tmp_path / "custom", tmp_path / "EXECUTED"
    tiny_llama().save_pretrained(model)
    word_tokenizer().save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="custom_llama", auto_map={"AutoConfig": "custom.CustomConfig",
                                                        "AutoModelForCausalLM": "custom.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        train.main(train.parse_args(flags(str(model), tiny_pairs, tmp_path / "run", "--steps", "1")))
    assert str(error.value) == (f"--model: {model}: its config.json names a model type transformers does not define, "
                                "with code of its own to run (auto_map); such code is never run here "
                                "(trust_remote_code=False)")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_pickled_weights_that_are_more_than_tensors_are_one_line_and_never_run(tmp_path, tiny_pairs):
    model, marker = tmp_path / "pickled", tmp_path / "EXECUTED"
    tiny_llama().save_pretrained(model)
    word_tokenizer().save_pretrained(model)
    (model / "model.safetensors").unlink()  # weights in the older, pickled format only
    torch.save({"model.embed_tokens.weight": Payload(marker)}, model / "pytorch_model.bin")
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        train.main(train.parse_args(flags(str(model), tiny_pairs, tmp_path / "run", "--steps", "1")))
    assert str(error.value) == (f"--model: {model}: its pickled weights (pytorch_model*.bin) hold more than tensors "
                                f"({os.system.__module__}.system), so they are not loaded; save the model as "
                                "safetensors from a copy you trust")
    assert not marker.exists()


# --- one line and a clear exit code ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["a link to /dev/zero", "a FIFO"])
def test_data_that_is_no_regular_file_is_one_line_without_reading_it(kind, tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    if kind == "a FIFO":
        os.mkfifo(data)
    elif os.path.exists("/dev/zero"):
        data.symlink_to("/dev/zero")
    else:
        pytest.skip("no /dev/zero")
    result = subprocess.run([sys.executable, "train.py", *flags(tiny_model_dir, str(data), tmp_path / "run")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == \
        f"error: {data}: not a regular file or directory"


def test_a_full_disk_at_the_first_write_is_one_line(tiny_model_dir, tiny_pairs, tmp_path, monkeypatch):
    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("no /dev/full")
    real_open = open

    def full_disk_for_the_trainer_state(path, mode="r", *args, **kwargs):
        return real_open("/dev/full" if str(path).endswith("trainer.pt") else path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "open", full_disk_for_the_trainer_state, raising=False)
    out = tmp_path / "run"
    with pytest.raises(command_line.TrainingError) as error:
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2", "--save-every", "1")))
    assert str(error.value) == f"could not write to {out}: No space left on device"
    assert checkpoints.checkpoints(out) == []  # the half-written one stays under its temporary name


def test_a_full_disk_when_the_run_records_itself_is_one_line(tiny_model_dir, tiny_pairs, tmp_path, monkeypatch):
    def no_space(path, value, strict=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(run_directory, "write_json", no_space)  # run.json, the first file a run writes
    out = tmp_path / "run"
    with pytest.raises(command_line.TrainingError) as error:
        train.main(train.parse_args(flags(tiny_model_dir, tiny_pairs, out, "--steps", "2")))
    assert str(error.value) == f"could not write to {out}: No space left on device"
