"""metrics.py against hand computations: every number below is worked out in the comment beside it."""
import math

import pytest

from metrics import dominates, fraction_dominated, hypervolume_2d, kl_estimate, mean_se, pareto_front, ranks, spearman


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
