"""conflict.py: the matched-KL difference and the hypervolume shares by hand, and the command end to end in
miniature (its data at each level, conflict.json's fields, the table, the figure, runs reused)."""
import json
import os

import pytest

from experiments import conflict
from tiny import ROOT

NAMES = ["quality", "conciseness"]
W = (0.5, 0.5)


def point(method, seed, kl, quality, conciseness, lr=1e-3):
    return {"method": method, "seed": seed, "kl": kl, "quality": quality, "conciseness": conciseness, "lr": lr,
            **({} if method == "reference" else {"w_quality": W[0], "w_conciseness": W[1]})}


# Weighted scores (0.5 q + 0.5 c): the reference 0.5 at KL 0 in both seeds. Seed 0: a reaches 0.6 at KL 0.4 and 0.7
# at KL 1.5; b 0.55 at KL 0.2 and 0.65 at KL 2.5. Seed 1: a 0.5 then 0.8 at KL 1.0; b 0.6 at KL 0.3, and KL 3.
ROWS = [point("reference", s, 0.0, 0.5, 0.5) for s in (0, 1)] + [
    point("a", 0, 0.4, 0.6, 0.6), point("a", 0, 1.5, 0.8, 0.6), point("b", 0, 0.2, 0.5, 0.6),
    point("b", 0, 2.5, 0.7, 0.6), point("a", 1, 0.1, 0.5, 0.5), point("a", 1, 1.0, 0.9, 0.7),
    point("b", 1, 0.3, 0.6, 0.6), point("b", 1, 3.0, 0.6, 0.6)]


def test_matched_kl_averages_the_frontier_difference_over_the_kl_grid_both_reached():
    # every seed of both reaches KL 1.5 at least: the grid points 0.25, 0.5 and 1.0 are compared
    # seed 0: at 0.25 a 0.5 (its first point is at 0.4), b 0.55; at 0.5 a 0.6, b 0.55; at 1.0 a 0.6, b 0.55
    # seed 1: at 0.25 a 0.5, b 0.5 (its 0.6 comes at 0.3); at 0.5 a 0.5, b 0.6; at 1.0 a 0.8, b 0.6
    differences = conflict.matched_kl(ROWS, "a", "b", [W], [0, 1], NAMES)
    assert differences[0] == pytest.approx((-0.05 + 0.05 + 0.05) / 3)
    assert differences[1] == pytest.approx((0.0 - 0.1 + 0.2) / 3)
    summary = conflict.per_seed(differences, [0, 1])
    assert summary["mean"] == pytest.approx((differences[0] + differences[1]) / 2)
    assert summary["se"] == pytest.approx(abs(differences[0] - differences[1]) / 2)


def test_hypervolume_shares_take_each_methods_best_point_within_the_common_kl_budget():
    budget, shares = conflict.hypervolume_shares(ROWS, ["a", "b"], [W], [0, 1], NAMES, exact=0.5)
    assert budget == 1.0  # the largest grid KL below 1.5, the least that every (method, seed) reached
    # one weighting: one point each, its rectangle from (0, 0), as a share of 0.5
    assert shares["a"][0] == pytest.approx(0.6 * 0.6 / 0.5) and shares["a"][1] == pytest.approx(0.9 * 0.7 / 0.5)
    assert shares["b"][0] == pytest.approx(0.5 * 0.6 / 0.5) and shares["b"][1] == pytest.approx(0.6 * 0.6 / 0.5)


@pytest.mark.slow
def test_the_command_builds_each_level_trains_every_method_and_writes_its_report(tmp_path, capsys):
    """On the shipped model (a random one writes no summary to make pairs of), everything else in miniature."""
    out = tmp_path / "conflict"
    flags = ["--model", f"{ROOT}/models/world-tiny", "--data", f"{ROOT}/data/world_train.jsonl", "--levels", "0,1",
             "--sweep", "0.8",
             "--seeds", "0,1", "--lrs", "2e-2", "--steps", "4", "--points", "2", "--prompts", "3", "--samples", "2",
             "--pairs", "8", "--max-new-tokens", "12", "--pool-prompts", "24", "--cs", "0.7", "--three", "1",
             "--out", str(out)]
    report = conflict.main(flags)
    levels = report["levels"]
    assert [e["level"] for e in levels] == [0.0, 1.0]
    assert levels[0]["conflict_share"] == 0.0 and levels[1]["conflict_share"] == 1.0
    for entry in levels + report["c"] + [report["three_objectives"]]:
        assert -1.0 <= entry["cosine"] <= 1.0 and 0.0 <= entry["interior"] <= 1.0
        for key in ("raco_minus_lw", "raco_minus_cagrad", "cagrad_minus_lw"):
            assert set(entry[key]) == {"mean", "se"}
    assert levels[0]["cosine"] > levels[1]["cosine"]  # agreeing pairs against conflicting ones
    assert [e["c"] for e in report["c"]] == [0.7]
    saved = json.loads((out / "conflict.json").read_text())
    assert [e["level"] for e in saved["levels"]] == [0.0, 1.0] and "raco_minus_lw" in saved["levels"][0]
    for level in ("0", "1"):
        with open(out / "data" / f"level-{level}" / "world_train.jsonl") as f:
            kinds = {json.loads(line)["kind"] for line in f}
        assert kinds == ({"conflict"} if level == "1" else {"agree", "waste"})
    markdown = (out / "conflict.md").read_text()
    assert "| level | conflict pairs |" in markdown
    c_table = markdown.split("## c at the sharpest level (1)")[1].split("##")[0]
    assert [row.split(" | ")[0] for row in c_table.splitlines() if row[:3] in ("| 0", "| 1")] == ["| 0.4", "| 0.7"]
    assert (out / "conflict.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trained = {d: os.path.getmtime(out / "runs" / d) for d in os.listdir(out / "runs")}
    capsys.readouterr()
    again = conflict.main(flags)  # every run reused: nothing trained twice, the same numbers
    assert {d: os.path.getmtime(out / "runs" / d) for d in os.listdir(out / "runs")} == trained
    assert again["levels"][1]["raco_minus_lw"] == report["levels"][1]["raco_minus_lw"]


def test_a_model_whose_samples_make_no_pair_of_a_level_is_one_line(tiny_world, tmp_path):
    from experiments import world_build
    from harness.errors import DataError
    with pytest.raises(DataError, match="hold no pair of the kinds conflict level 0 draws"):  # a random model
        world_build.conflict_data(tiny_world["model"], str(tmp_path / "data"), [0.0], prompts=10,
                                  held_out=tiny_world["eval"])
