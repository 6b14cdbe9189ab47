"""pareto.py: the sweep end to end on the world in miniature (every row, the table, the figure, runs reused and
retrained when stale), and bad input."""
import csv
import dataclasses
import json
import os
import time

import pytest

import train
import world
from experiments import pareto, sweeps
from harness import command_line, run_directory
from harness.metrics import front_gain_2d, hypervolume_2d, hypervolume_3d
from tiny import crash_after


@pytest.mark.slow
def test_pareto_sweep_writes_every_row_table_and_figure_and_reuses_runs(tiny_world, tmp_path, capsys):
    out = tmp_path / "pareto"
    flags = ["--quick", "--model", tiny_world["model"], "--data", tiny_world["train"], "--methods",
             "lw,raco", "--sweep", "0.2,0.8", "--seeds", "0,1", "--steps", "2", "--prompts", "3", "--samples", "2",
             "--pairs", "12", "--max-new-tokens", "12", "--out", str(out)]
    rows, stats = pareto.main(flags)
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
    front = world.exact_front(["quality", "conciseness"], world.eval_prompts(3))  # the sweep's 3 prompts
    exact = sweeps.exact_hypervolume(front, ["quality", "conciseness"])
    assert exact > 0.6 and f"the world's exact front (world.exact_front, mixtures allowed) has {exact:.4f}" in report
    for s, seed in enumerate((0, 1)):  # the statistics are those of the rows
        points = [(r["quality"], r["conciseness"]) for r in rows if (r["method"], r["seed"]) == ("raco", seed)]
        assert stats["hypervolume"]["raco"][s] == pytest.approx(hypervolume_2d(points, (0, 0)))
        assert stats["share"]["raco"][s] == pytest.approx(stats["hypervolume"]["raco"][s] / exact)
        assert stats["gain"]["raco"][s] == pytest.approx(sum(front_gain_2d(p, front) for p in points) / 2)
        assert stats["gain"]["raco"][s] > 0  # an untrained-ish model is well inside the exact front
    mtime = os.path.getmtime(out / "runs" / "raco-w0.2-0.8-s1" / "summary.json")
    capsys.readouterr()
    again, _ = pareto.main(flags)  # an interrupted or repeated sweep trains nothing twice
    assert "reused" in capsys.readouterr().out and json.dumps(again) == json.dumps(rows)
    assert os.path.getmtime(out / "runs" / "raco-w0.2-0.8-s1" / "summary.json") == mtime
    later = time.time()  # the world rebuilt at the same path after the runs: they are stale
    os.utime(os.path.join(tiny_world["model"], "config.json"), (later, later))
    pareto.main(flags)
    assert "reused" not in capsys.readouterr().out
    assert os.path.getmtime(out / "runs" / "raco-w0.2-0.8-s1" / "summary.json") > mtime


@pytest.mark.slow
def test_three_objectives_use_the_exact_3d_hypervolume(tiny_world, tmp_path):
    names = ["quality", "conciseness", "faithfulness"]
    rows, stats = pareto.main(["--quick", "--model", tiny_world["model"], "--data", tiny_world["train"], "--methods",
                               "lw,raco", "--objectives", ",".join(names), "--sweep", "0.6:0.2:0.2,0.2:0.2:0.6",
                               "--steps", "2", "--prompts", "3", "--samples", "2", "--pairs", "12",
                               "--max-new-tokens", "12", "--out", str(tmp_path / "three")])
    points = [tuple(r[n] for n in names) for r in rows if r["method"] == "lw"]
    assert [r["w_faithfulness"] for r in rows if r["method"] == "lw"] == [0.2, 0.6]
    assert stats["hypervolume"]["lw"] == [pytest.approx(hypervolume_3d(points, (0, 0, 0)))]
    # faithfulness is 1 all along the exact front, so its 3-D hypervolume is the 2-D one
    two = sweeps.exact_hypervolume(world.exact_front(names[:2], world.eval_prompts(3)), names[:2])
    assert stats["exact"] == pytest.approx(two)
    assert "# Pareto sweep on the embedded world: quality vs conciseness vs faithfulness" in \
        (tmp_path / "three" / "pareto.md").read_text()


def test_weight_grids():
    assert sweeps.weight_grid("0.3,0.7", ["a", "b"]) == [(0.3, 0.7), (0.7, 0.3)]  # 1 - 0.3 spelled as 0.7
    assert sweeps.weight_grid("0.5:0.25:0.25,0.2:0.2:0.6", ["a", "b", "c"]) == [(0.5, 0.25, 0.25), (0.2, 0.2, 0.6)]
    for bad in ("0.3", "0.3,0.3", "0.5:0.5,0.2:0.8", "0.6:0.2:0.3,0.2:0.2:0.6", "a,b"):
        with pytest.raises(command_line.UsageError, match="^--sweep: expected"):
            sweeps.weight_grid(bad, ["a", "b"] if ":" not in bad else ["a", "b", "c"])


BAD_INPUTS = [
    (["--methods", "lw,adam"], "--methods: expected some of lw, cagrad, raco, mgda, pcgrad, amopo, got 'lw,adam'"),
    (["--sweep", "0,1"], "--sweep: expected at least 2 distinct weight vectors for 2 objectives, each in (0, 1) and "
                         "summing to 1, got '0,1'"),
    (["--seeds", "a"], "--seeds: expected comma-separated integers, got 'a'"),
    (["--objectives", "quality,kindness"], "--objectives: expected two or three of quality, conciseness, "
                                           "faithfulness, got 'quality,kindness'"),
    (["--lr", "-1"], "--lr: invalid value -1.0 (see --help)"),
    (["--model", "no/such/model"], "no/such/model: not found; the sweep runs on the embedded world "
                                   "(python experiments/world_build.py build)"),
    (["--temperature", "0"], "--temperature: expected a finite number >= 0.0001, got 0.0"),
    (["--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["--colour"], "unrecognized arguments: --colour"),
    (["--out", ""], "--out: empty; expected a directory"),  # found now, not after the whole sweep
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(flags, message):
    with pytest.raises(command_line.INPUT_ERRORS) as error:
        pareto.main(flags)
    assert str(error.value) == message


def test_a_sweep_continues_an_interrupted_run_and_retrains_a_stale_or_other_one(tiny_model_dir, tiny_pairs, tmp_path,
                                                                               monkeypatch):
    cfg = train.Config(model=tiny_model_dir, data=tiny_pairs, batch_size=4, steps=6, save_every=2, eval_prompts=0,
                       log_every=2, out=str(tmp_path / "run"))
    honest = train.objective_losses
    monkeypatch.setattr(train, "objective_losses", crash_after(3, honest))  # in step 4
    with pytest.raises(RuntimeError):
        sweeps.train_run(cfg)
    monkeypatch.setattr(train, "objective_losses", honest)
    assert run_directory.resumable(dataclasses.asdict(cfg), run_directory.input_fingerprints(cfg.data, cfg.model))
    sweeps.train_run(cfg)  # the sweep run again: it continues where the interrupt left it
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resumed_from"].endswith("step-000002")
    other = dataclasses.replace(cfg, lr=5e-2)  # the sweep's settings changed: the run is trained afresh
    assert not run_directory.resumable(dataclasses.asdict(other), run_directory.input_fingerprints(cfg.data,
                                                                                                   cfg.model))
    sweeps.train_run(other)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["lr"] == 5e-2
