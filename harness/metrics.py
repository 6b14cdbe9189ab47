"""The numbers this project reports, as pure functions of plain lists: no model, no torch.

Errors and spreads: mean_se (prompts as the independent units), mean_std (over seeds), kl_estimate.
Agreement: pearson, ranks, spearman (weight fidelity). Fronts, every objective maximised: dominates and pareto_front
(world.py's), fraction_dominated, hypervolume_2d, hypervolume_3d; a continuous front such as world.exact_front:
front_hypervolume_2d, front_gain_2d.
"""
import math

from world import dominates, pareto_front  # where the world's exact front first needs them


def mean_se(values, group_size=1):
    """(mean, standard error), averaging each run of `group_size` consecutive values (one prompt's samples) first:
    the error is the std of the group means over sqrt(number of groups); nan for a single group. Samples of one
    prompt are correlated, and counting them as independent would understate the error."""
    values = [float(v) for v in values]
    groups = [sum(values[i:i + group_size]) / len(values[i:i + group_size]) for i in range(0, len(values), group_size)]
    n, mean = len(groups), sum(groups) / len(groups)
    return mean, math.sqrt(sum((g - mean) ** 2 for g in groups) / (n - 1) / n) if n > 1 else math.nan


def mean_std(values):
    """(mean, std) over seeds, ignoring nan; std is 0 for one value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))


def kl_estimate(policy_logps, reference_logps, group_size=1):
    """KL(pi || pi_ref) = E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)] from samples y drawn from pi itself (temperature
    1): (mean, standard error). The estimate is unbiased, so a finite sample may read slightly below 0."""
    return mean_se([p - r for p, r in zip(policy_logps, reference_logps)], group_size)


def pearson(x, y):
    """Pearson's correlation of two equally long lists; nan if either is constant."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def ranks(values):
    """1-based ranks; tied values share the mean of the ranks they span ([5, 7, 7] -> [1, 2.5, 2.5])."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result, start = [0.0] * len(values), 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in order[start:end + 1]:
            result[k] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x, y):
    """Spearman's rank correlation: Pearson's correlation of the tie-averaged ranks; nan if either is constant."""
    return pearson(ranks(x), ranks(y))


def fraction_dominated(points, others):
    """Fraction of `points` dominated by the front of `others`."""
    front = pareto_front(others)
    return sum(any(dominates(q, p) for q in front) for p in points) / len(points)


def hypervolume_2d(points, reference):
    """Area of the region dominated by `points` and dominating `reference` (both objectives maximised).

    Walk the points by decreasing first objective: each point that reaches higher than all before it adds the strip
    between its height and the best height so far, as wide as its distance from the reference in the first
    objective. A dominated point never reaches higher, so it adds nothing; a point not strictly better than the
    reference in both objectives lies outside the region and is dropped.
    """
    inside = [p for p in points if p[0] > reference[0] and p[1] > reference[1]]
    area, best = 0.0, reference[1]
    for x, y in sorted(inside, key=lambda p: (-p[0], -p[1])):
        if y > best:
            area += (x - reference[0]) * (y - best)
            best = y
    return area


def hypervolume_3d(points, reference):
    """Volume of the region dominated by `points` and dominating `reference` (all three objectives maximised).

    Slice along the third objective: between two consecutive levels of it the slice is one 2-D region, dominated by
    the points that reach at least the upper level, so the volume is a sum of 2-D hypervolumes times thicknesses.
    Exact; O(N^2 log N). A point not strictly better than the reference in every objective is dropped.
    """
    inside = [p for p in points if all(x > r for x, r in zip(p, reference))]
    levels = sorted({p[2] for p in inside}, reverse=True) + [reference[2]]
    return sum(hypervolume_2d([p[:2] for p in inside if p[2] >= top], reference[:2]) * (top - below)
               for top, below in zip(levels, levels[1:]))


# A continuous front, e.g. world.exact_front: `vertices` sorted by the first objective, the second non-increasing,
# every point of the polyline through them achievable (mixtures of neighbouring vertices). What it dominates is
# everything below the polyline, below its first vertex's height to the left, and nothing right of its last vertex.


def _check_front(vertices):
    assert vertices and all(a[0] <= b[0] and a[1] >= b[1] for a, b in zip(vertices, vertices[1:])), vertices


def front_hypervolume_2d(vertices, reference):
    """Area dominated by the front through `vertices` and dominating `reference`: the integral of the front's height
    above reference[1], from reference[0] to the last vertex. Unlike hypervolume_2d(vertices), which counts only the
    staircase under the vertices, it counts the triangles between the staircase and the polyline."""
    _check_front(vertices)
    (rx, ry), area = reference, 0.0
    start = (min(rx, vertices[0][0]), vertices[0][1])  # the flat piece left of the first vertex
    for (ax, ay), (bx, by) in zip([start] + list(vertices[:-1]), vertices):
        left = max(ax, rx)
        if bx <= left:
            continue
        low, high = sorted((ay + (by - ay) * (left - ax) / (bx - ax) - ry, by - ry))  # heights at both ends
        if low >= 0:
            area += (low + high) / 2 * (bx - left)  # a trapezoid
        elif high > 0:
            area += high * high / (high - low) / 2 * (bx - left)  # the triangle above reference[1]
    return area


def front_gain_2d(point, vertices):
    """How far `point` could move along (1, 1) and stay dominated by the front through `vertices`: the t with
    point + (t, t) on the boundary of the region the front dominates. t > 0: the front offers t more of both
    objectives at once; t = 0: on the boundary; t < 0: beyond the front (unreachable) by t in both."""
    _check_front(vertices)
    (px, py), (x0, y0) = point, vertices[0]
    offset = py - px  # the ray is y = x + offset; along the front, y - x falls strictly
    if y0 - x0 <= offset:
        return y0 - py  # it meets the flat piece left of the first vertex
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:]):
        if by - bx <= offset:  # it meets this edge
            return ax + (ay - ax - offset) / ((ay - ax) - (by - bx)) * (bx - ax) - px
    return vertices[-1][0] - px  # it passes above the last vertex and leaves through the vertical side below it

