"""frontier.py: the frontier and the matched-KL comparison by hand, and the command end to end in miniature."""
import csv

import pytest

from experiments import frontier

NAMES = ["quality", "conciseness"]
W = (0.5, 0.5)


def point(method, seed, kl, quality, conciseness):
    return {"method": method, "seed": seed, "kl": kl, "quality": quality, "conciseness": conciseness,
            **({} if method == "reference" else {"w_quality": W[0], "w_conciseness": W[1]})}


# Two seeds. Weighted scores (0.5 q + 0.5 c): the reference 0.5 at KL 0; method a reaches 0.6 at KL 0.5 and 0.7
# at KL 3 (a point at KL 2 scores 0.55: below the frontier, it must not lower it); method b reaches 0.65 at KL 0.3
# and nothing better.
ROWS = [point("reference", s, 0.0, 0.5, 0.5) for s in (0, 1)] + [
    point("a", 0, 0.5, 0.6, 0.6), point("a", 0, 2.0, 0.55, 0.55), point("a", 0, 3.0, 0.9, 0.5),
    point("a", 1, 0.5, 0.6, 0.6), point("a", 1, 3.0, 0.8, 0.6),
    point("b", 0, 0.3, 0.65, 0.65), point("b", 1, 0.3, 0.6, 0.7), point("b", 1, 4.5, 0.6, 0.6)]


def test_the_frontier_is_the_best_weighted_score_at_kl_at_most_k():
    best, reach = frontier.frontier(ROWS, "a", W, 0, NAMES)
    assert reach == 3.0
    assert [frontier.weighted(best(k), W, NAMES) for k in (0.0, 0.4, 0.5, 2.5, 3.0, 10.0)] == pytest.approx(
        [0.5, 0.5, 0.6, 0.6, 0.7, 0.7])
    assert best(-1.0) is None
    best, reach = frontier.frontier(ROWS, "b", W, 1, NAMES)
    assert reach == 4.5 and frontier.weighted(best(4.5), W, NAMES) == pytest.approx(0.65)


def test_methods_are_compared_only_where_every_seed_of_both_reached():
    # a reaches KL 3 in both seeds, b 0.3 and 4.5: the common reach is 0.3, so only KL 0.25 is compared, where a is
    # still at the reference (0.5) and b at 0.5 too (its 0.65 comes at 0.3): a difference of 0
    assert frontier.compare(ROWS, "a", "b", W, [0, 1], NAMES) == [(0.25, 0.0, 0.0)]
    rows = ROWS + [point("b", 0, 5.0, 0.6, 0.6)]  # now b reaches 4.5 in both seeds
    diffs = dict((k, (mean, se)) for k, mean, se in frontier.compare(rows, "a", "b", W, [0, 1], NAMES))
    assert sorted(diffs) == [0.25, 0.5, 1.0, 2.0]  # 3.0 is not on the grid, 4.0 is beyond a's reach
    assert diffs[0.5] == pytest.approx((0.6 - 0.65, 0.0))  # both seeds: a 0.6, b 0.65
    assert diffs[2.0][0] == pytest.approx(-0.05)


@pytest.mark.slow
def test_the_command_scores_every_checkpoint_and_writes_its_report(tiny_world, tmp_path):
    out = tmp_path / "frontier"
    rows = frontier.main(["--quick", "--model", tiny_world["model"], "--data", tiny_world["train"], "--methods",
                          "lw,raco", "--lrs", "1e-2,3e-2", "--steps", "4", "--points", "2", "--prompts", "3",
                          "--samples", "2", "--pairs", "12", "--max-new-tokens", "12", "--out", str(out)])
    trained = [(r["method"], r["lr"], r["step"]) for r in rows if r["method"] != "reference"]
    assert trained == [(m, lr, step) for m in ("lw", "raco") for lr in (1e-2, 3e-2) for step in (2, 4)]
    assert [r["kl"] for r in rows if r["method"] == "reference"] == [0.0]
    with open(out / "frontier.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    report = (out / "frontier.md").read_text()
    assert "## Weights 0.8:0.2" in report and "| raco - lw |" in report
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
