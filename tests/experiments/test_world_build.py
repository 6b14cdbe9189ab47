"""experiments/world_build.py: a build is deterministic, and its command's bad flags are one line."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from experiments import world_build
from harness import command_line
from tiny import ROOT


@pytest.mark.slow
def test_a_tiny_build_is_deterministic(tmp_path):
    def tiny(out):
        world_build.build(str(out / "model"), str(out / "data"),
                          world_build.Build(steps=5, batch_size=8, train_pairs=6, eval_pairs=4), verbose=False)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        files = {name: (out / "data" / name).read_text() for name in ("world_train.jsonl", "world_eval.jsonl")}
        return model.state_dict(), AutoTokenizer.from_pretrained(out / "model").get_vocab(), files

    first, second = tiny(tmp_path / "a"), tiny(tmp_path / "b")
    assert first[0].keys() == second[0].keys()
    assert all(torch.equal(first[0][k], second[0][k]) for k in first[0])
    assert first[1] == second[1] and first[2] == second[2]
    assert 0 < len(first[2]["world_train.jsonl"].splitlines()) <= 6  # pairs with an empty sample are dropped


def test_the_build_commands_bad_flags_are_one_line_before_anything_runs():
    for flags, message in ((["build", "--steps", "0"], "--steps: invalid value 0 (see --help)"),
                           (["stats", "--temperature", "0"],
                            "--temperature: expected a finite number >= 0.0001, got 0.0"),
                           (["stats", "--out-model", "./no/model"], "--out-model: ./no/model: no such directory"),
                           (["build", "--out-data", ""], "--out-data: empty; expected a directory")):
        with pytest.raises(command_line.INPUT_ERRORS) as error:
            world_build.main(flags)
        assert str(error.value) == message


def test_the_build_names_which_shipped_files_it_reproduced(tmp_path):
    model, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(os.path.join(ROOT, "models", "world-tiny"), model)
    shutil.copytree(os.path.join(ROOT, "data"), data)
    same, different = world_build.compare_with_shipped(str(model), str(data))
    assert different == [] and len(same) == 7
    lines = (data / "world_train.jsonl").read_text().splitlines(keepends=True)
    (data / "world_train.jsonl").write_text("".join(lines[:-1]))  # 2,998 pairs where the shipped world has 2,999
    assert world_build.compare_with_shipped(str(model), str(data))[1] == ["data/world_train.jsonl"]


def test_the_build_writes_beside_the_shipped_world_unless_told_otherwise():
    result = subprocess.run([sys.executable, "experiments/world_build.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    text = re.sub(r"-\s+", "-", " ".join(result.stdout.split()))  # help wraps lines at hyphens
    assert "(default: out/world/data;" in text and "(default: out/world/world-tiny to build" in text
