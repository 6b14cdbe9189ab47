"""metrics.py against hand computations: every number below is worked out in the comment beside it."""
import itertools
import math
import random

import pytest

from harness.metrics import (dominates, fraction_dominated, front_gain_2d, front_hypervolume_2d, hypervolume_2d,
                             hypervolume_3d, kl_estimate, mean_se, pareto_front, ranks, spearman)


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


def test_hypervolume_3d_by_hand():
    assert hypervolume_3d([(1, 1, 1)], (0, 0, 0)) == pytest.approx(1.0)  # the unit cube
    assert hypervolume_3d([(2, 2, 2)], (1, 1, 1)) == pytest.approx(1.0)
    assert hypervolume_3d([(2, 1, 1), (1, 2, 1)], (0, 0, 0)) == pytest.approx(3.0)  # 2 + 2 - the shared unit cube
    assert hypervolume_3d([(2, 2, 1), (1, 1, 3)], (0, 0, 0)) == pytest.approx(6.0)  # 4 + 3 - 1
    # three boxes: 2*1*1 + 1*2*1 + 1*1*2 - three pairwise overlaps of 1 + the triple overlap of 1 = 4
    assert hypervolume_3d([(2, 1, 1), (1, 2, 1), (1, 1, 2)], (0, 0, 0)) == pytest.approx(4.0)
    assert hypervolume_3d([], (0, 0, 0)) == 0.0


def test_hypervolume_3d_ignores_dominated_duplicate_and_outside_points():
    boxes = [(2, 2, 1), (1, 1, 3)]
    assert hypervolume_3d(boxes + [(1, 1, 1), (2, 2, 1), (0.5, 1, 2.5)], (0, 0, 0)) == pytest.approx(6.0)
    assert hypervolume_3d(boxes + [(9, 9, 0), (9, 9, -1), (-1, 9, 9), (9, 0, 9)], (0, 0, 0)) == pytest.approx(6.0)
    assert hypervolume_3d([(2, 3, 4)], (2, 0, 0)) == 0.0
    assert hypervolume_3d([(9, 9, -1)], (0, 0, 0)) == 0.0  # below the reference in the sliced objective


def test_hypervolume_3d_of_points_at_one_height_is_the_2d_area_times_the_height():
    front = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume_3d([p + (0.5,) for p in front], (0, 0, 0)) == pytest.approx(0.5 * hypervolume_2d(front, (0, 0)))


def test_hypervolume_3d_matches_a_count_of_grid_cells():
    # Integer points: the dominated region is a union of unit cells, and a cell lies in it exactly when its upper
    # corner is dominated by (<=) some point; counting them is an independent, exact computation.
    rng = random.Random(0)
    for _ in range(200):
        points = [tuple(rng.randint(0, 5) for _ in range(3)) for _ in range(rng.randint(1, 8))]
        reference = tuple(rng.randint(0, 2) for _ in range(3))
        cells = sum(any(all(c + 1 <= p_ for c, p_ in zip(cell, p)) for p in points)
                    for cell in itertools.product(*[range(r, 5) for r in reference]))
        assert hypervolume_3d(points, reference) == cells


def test_front_hypervolume_2d_by_hand():
    assert front_hypervolume_2d([(0, 1), (1, 0)], (0, 0)) == pytest.approx(0.5)  # a triangle
    assert front_hypervolume_2d([(0, 1), (1, 0)], (0.25, 0.25)) == pytest.approx(0.125)  # legs of 0.5
    assert front_hypervolume_2d([(0, 1), (1, 0)], (0, 0.5)) == pytest.approx(0.125)  # the front crosses y = 0.5
    assert front_hypervolume_2d([(0, 1), (1, 0)], (0.5, 0.5)) == 0.0  # the front only touches the corner
    # the rectangle left of the first vertex (0.5 * 1), then a trapezoid (0.5 * 0.75)
    assert front_hypervolume_2d([(0.5, 1), (1, 0.5)], (0, 0)) == pytest.approx(0.875)
    assert front_hypervolume_2d([(2, 5)], (1, 1)) == pytest.approx(hypervolume_2d([(2, 5)], (1, 1)))  # one vertex
    with pytest.raises(AssertionError):
        front_hypervolume_2d([(0, 0), (1, 1)], (0, 0))  # not a front: the second vertex dominates the first


def test_front_hypervolume_2d_is_the_limit_of_dense_points_along_the_front():
    front = [(0.2, 0.75), (0.5, 0.65), (0.7, 0.55), (1.0, 0.4)]
    area = front_hypervolume_2d(front, (0.1, 0.1))
    dense = [(a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1])) for a, b in zip(front, front[1:])
             for s in [i / 1000 for i in range(1001)]]
    assert hypervolume_2d(front, (0.1, 0.1)) < hypervolume_2d(dense, (0.1, 0.1)) <= area
    assert area - hypervolume_2d(dense, (0.1, 0.1)) < 1e-3


def test_gain_to_a_front_by_hand():
    diagonal = [(0, 1), (1, 0)]
    assert front_gain_2d((0.25, 0.25), diagonal) == pytest.approx(0.25)  # meets x + y = 1 at (0.5, 0.5)
    assert front_gain_2d((0.6, 0.6), diagonal) == pytest.approx(-0.1)  # beyond the front
    assert front_gain_2d((0.3, 0.7), diagonal) == pytest.approx(0.0)  # on it
    corner = [(0.5, 1), (1, 0.5)]
    assert front_gain_2d((0, 0.9), corner) == pytest.approx(0.1)  # meets the flat piece left of the first vertex
    assert front_gain_2d((0, 0), corner) == pytest.approx(0.75)  # meets the edge x + y = 1.5
    assert front_gain_2d((0.5, 0), [(0, 1), (1, 1)]) == pytest.approx(0.5)  # leaves below the last vertex
