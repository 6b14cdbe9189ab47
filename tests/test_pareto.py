"""pareto.py: the sweep end to end on the world in miniature (every row, the table, the figure, runs reused and
retrained when stale), and bad input."""
import csv
import json
import os
import time

import pytest

import pareto
import train
from metrics import hypervolume_2d


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
    assert "reference point (quality, conciseness) = (0.0, 0.0)" in report
    for s, seed in enumerate((0, 1)):  # the statistics are those of the rows
        points = [(r["quality"], r["conciseness"]) for r in rows if (r["method"], r["seed"]) == ("raco", seed)]
        assert stats["hypervolume"]["raco"][s] == pytest.approx(hypervolume_2d(points, (0, 0)))
    mtime = os.path.getmtime(out / "runs" / "raco-w0.2-s1" / "summary.json")
    capsys.readouterr()
    again, _ = pareto.main(flags)  # an interrupted or repeated sweep trains nothing twice
    assert "reused" in capsys.readouterr().out and json.dumps(again) == json.dumps(rows)
    assert os.path.getmtime(out / "runs" / "raco-w0.2-s1" / "summary.json") == mtime
    later = time.time()  # the world rebuilt at the same path after the runs: they are stale
    os.utime(os.path.join(tiny_world["model"], "config.json"), (later, later))
    pareto.main(flags)
    assert "reused" not in capsys.readouterr().out
    assert os.path.getmtime(out / "runs" / "raco-w0.2-s1" / "summary.json") > mtime




BAD_INPUTS = [
    (["--methods", "lw,adam"], "--methods: expected some of lw, cagrad, raco, mgda, pcgrad, amopo, got 'lw,adam'"),
    (["--sweep", "0,1"], "--sweep: expected two or more distinct weights of quality in (0, 1), got '0,1'"),
    (["--seeds", "a"], "--sweep, --seeds: expected comma-separated numbers, got '0.1,0.3,0.5,0.7,0.9', 'a'"),
    (["--model", "no/such/model"], "no/such/model: not found; the sweep runs on the embedded world "
                                   "(python world.py build)"),
    (["--temperature", "0"], "--temperature: expected a positive finite number, got 0.0"),
    (["--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["--colour"], "unrecognized arguments: --colour"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(flags, message):
    with pytest.raises(train.UsageError) as error:
        pareto.main(flags)
    assert str(error.value) == message
