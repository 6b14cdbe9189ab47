"""The CAGrad dual for any number of objectives, solved exactly: Wolfe's active-set method on the simplex's faces.

    minimise   Phi(p) = b^T p + s sqrt(p^T H p)   over the simplex p_i >= 0, sum_i p_i = 1,

with H the m x m Gram matrix of the per-objective gradients, b = H w and s = c sqrt(w^T H w) (Algorithm 1, line 4
of arXiv 2602.02495; docs/method.md derives it). cagrad.py solves m = 2 in closed form and calls
`wolfe_active_set` for m >= 3. Phi is convex, so the face of the simplex that holds the minimiser holds it as the
stationary point of Phi on that face's affine hull, which has a closed form (_face_minimiser). The method walks
from the best vertex through faces of falling Phi, solving each face exactly, and stops when the Frank-Wolfe gap
certifies optimality: exact like enumerating all 2^m - 1 faces, at the cost of a few faces.

It works on coordinates of the gradients (X with X X^T = H) rather than on H itself, which keeps every face's
geometry accurate to rounding relative to each gradient's own norm; tests/method/test_dual_solver.py checks it
against an enumeration of every face in 40-digit arithmetic.
"""

import math

import numpy as np

# Every threshold here is relative, none absolute: per-objective gradient norms 1e6 apart are ordinary in LLM
# training, and a gradient 1e-6 of the largest is small, not zero. A squared norm ||sum_i x_i g_i||^2 read off the
# Gram matrix carries a rounding error of about m * 1e-16 * (sum_i |x_i| ||g_i||)^2; below ROUNDING times that
# scale the combination has cancelled to zero for all that H can tell (exact zeros and what rounding makes of them).
ROUNDING = 1e-13
# The solver works on the gradients' coordinates (_coordinates), where rounding is ~1e-16 of the norms involved, not
# of their squares: a combination shorter than _TOLERANCE times sum_i |x_i| ||g_i|| is zero, and Phi is compared
# with itself to _TOLERANCE times the size of its terms, |b|^T p + s sum_i p_i ||g_i||.
_TOLERANCE = 1e-12


def wolfe_active_set(H, b, s):
    """argmin over the simplex of b^T p + s sqrt(p^T H p), s > 0, b = H w for some w (so that Phi = 0 wherever
    G_p = 0): numpy float64 in, the minimiser p (m,) out."""
    return _solve_active_set(_coordinates(H), b, s)


def _coordinates(H):
    """Coordinates X (m, r) of the gradients in an orthonormal basis of their span, X X^T = H: a Cholesky
    factorisation, with pivoting, of the cosine matrix, scaled back by the norms.

    The general solver works on these vectors rather than on H, which keeps it exact to rounding: a face's geometry
    then comes from differences of coordinates, not from H_jj - 2 H_jf + H_ff, where a gradient 1e-8 of the others
    is lost to rounding (normal equations against QR). Factoring cosines makes each gradient's coordinates accurate
    relative to its own norm, and a direction whose residual is rounding noise (duplicated, antiparallel or dependent
    gradients) gets no coordinate, so those degeneracies come out exact.
    """
    norms = np.sqrt(np.clip(np.diag(H), 0.0, None))
    live = np.flatnonzero(norms > 0.0)
    cosines = H[np.ix_(live, live)] / np.outer(norms[live], norms[live])
    L = np.zeros((len(live), len(live)))
    residual = np.ones(len(live))  # 1 - the squared cosines explained by the columns so far
    rank = 0
    while rank < len(live) and residual.max() > ROUNDING:
        i = int(np.argmax(residual))
        L[:, rank] = (cosines[:, i] - L[:, :rank] @ L[i, :rank]) / math.sqrt(residual[i])
        residual -= L[:, rank] ** 2
        rank += 1
    X = np.zeros((len(H), rank))
    X[live] = norms[live, None] * L[:, :rank]
    return X


def _value(X, b, s, p):
    """Phi(p) from the coordinates: b^T p + s ||p^T X||."""
    return float(b @ p + s * np.linalg.norm(p @ X))


def _terms_size(X, b, s, p):
    """The size of Phi's terms at p, |b|^T p + s sum_i p_i ||g_i||: the scale its rounding errors are relative to."""
    return float(np.abs(b) @ p + s * np.linalg.norm(X, axis=1) @ p)


def _affine_frame(X, face):
    """Coordinates on the affine hull of a face (a sorted list of indices): p = e_f + Z y, where f is the face's
    shortest gradient and Z's columns are e_j - e_f for the others, so that G_p = x_f + D^T y, D's rows x_j - x_f.

    Returns (f, Z, frame, null). frame = (U, sigma, V, lengths), the SVD of D's rows scaled to unit length,
    D^T = U diag(sigma) V^T diag(lengths), when the differences are linearly independent; else None, with a
    direction null of Z along which G_p does not move. Independence is judged on the scaled rows, i.e. relative to
    each difference's own length: with gradient norms 1e6 apart, any absolute threshold is wrong for some.
    Putting the origin at the shortest gradient keeps the y small near it, where they keep their relative precision.
    """
    norms = np.linalg.norm(X, axis=1)
    first = min(face, key=lambda i: norms[i])
    rest = [i for i in face if i != first]
    Z = np.zeros((len(X), len(rest)))
    Z[first, :] = -1.0
    Z[rest, range(len(rest))] = 1.0
    D = X[rest] - X[first]
    lengths = np.linalg.norm(D, axis=1)
    duplicated = lengths <= _TOLERANCE * (norms[rest] + norms[first])
    if duplicated.any():
        return first, Z, None, Z[:, np.argmax(duplicated)]
    U, sigma, Vt = np.linalg.svd((D / lengths[:, None]).T)
    if len(sigma) < len(rest) or (len(rest) and sigma[-1] <= _TOLERANCE):
        return first, Z, None, Z @ (Vt[-1] / lengths)
    return first, Z, (U[:, :len(rest)], sigma, Vt.T, lengths), None


def _face_minimiser(X, b, s, face):
    """Where Phi goes on the affine hull of a face: (its minimiser, None), or (None, a direction within the hull
    along which Phi never increases). s > 0.

    In the frame p = e_f + Z y, ||G_p||^2 = q(y) = y^T M y + 2 k^T y + k0 (M = D D^T) and Phi = b_f + v^T y +
    s sqrt(q(y)), v = Z^T b. Completing the square, q = (y - y_q)^T M (y - y_q) + q_min, and Phi' = 0 gives the single
    point y = y_q - (r / s) M^-1 v with r^2 (1 - alpha / s^2) = q_min, alpha = v^T M^-1 v. Where q_min = 0 (0 lies in
    the hull, e.g. antiparallel gradients) it is the kink y_q, where G_p = 0. If alpha >= s^2 there is no minimiser:
    Phi falls (or levels off) forever along -M^-1 v, a convex function whose slope at infinity is <= 0. If the
    differences are dependent, Phi is constant along the null direction: G_p does not move, nor does b^T p = w^T H p.
    """
    first, Z, frame, null = _affine_frame(X, face)
    if frame is None:
        return None, null
    U, sigma, V, lengths = frame
    t = V.T @ (Z.T @ b / lengths) / sigma  # the projection of g0 onto the face's directions, in the basis U
    M_inv_v = V @ (t / sigma) / lengths
    if t @ t >= s * s:  # alpha = t^T t
        return None, -Z @ M_inv_v
    x_f = X[first]
    y_q = -V @ (U.T @ x_f / sigma) / lengths
    q_min = np.linalg.norm(x_f - U @ (U.T @ x_f)) ** 2
    r = math.sqrt(q_min / (1.0 - (t @ t) / (s * s)))
    return np.eye(len(X))[first] + Z @ (y_q - (r / s) * M_inv_v), None


def _descend(X, b, s, p, support):
    """From p on the face `support`, the minimiser of Phi over that face: Wolfe's minor cycle (as in his min-norm
    point algorithm). Go to the minimiser on the face's affine hull if it lies inside the face; else move towards it
    (or along the direction of decrease, or of constancy) until a coordinate reaches 0, drop that vertex, repeat.
    Phi never increases: it is convex, and the target is no worse than p."""
    while len(support) > 1:
        target, direction = _face_minimiser(X, b, s, support)
        if target is not None and target[support].min() > 0.0:
            return target, support
        if target is not None:
            direction = target - p
        shrinking = np.flatnonzero(direction < 0.0)  # not empty: the direction sums to 0, or the target has p_i <= 0
        steps = -p[shrinking] / direction[shrinking]
        p = np.maximum(p + steps.min() * direction, 0.0)
        p[shrinking[np.argmin(steps)]] = 0.0
        support = [i for i in support if p[i] > 0.0]
    return p / p.sum(), support


def _leave_kink(X, b, s, p, support):
    """At a kink, where the support's gradients cancel (G_p = 0, so Phi(p) = b^T p = w^T H p = 0): None if p is
    optimal, else a point where Phi < 0, from which descent never comes back to a kink.

    Phi is not differentiable here, so the gradient cannot tell. By duality p is optimal iff some direction
    d = g0 + s u, ||u|| <= 1, has <g_i, d> >= 0 for every i. On the support the cancellation forces d to be orthogonal
    to V = span of the support's g_i, which uses ||P_V g0||^2 = alpha of the radius s^2. What is left is the same
    problem for the other objectives, projected onto V's complement: gradients P g_j, b'_j = <P g_j, g0>, radius
    s' = sqrt(s^2 - alpha) > 0 (the kink was the hull's minimiser). Its value is >= 0 iff p is optimal. If it is
    negative at p', with x' = sum_j p'_j P g_j, then x = x' - (||x'|| / s') P_V g0 has <x, g0> + s ||x|| = Phi'(p') < 0
    as well, and x is a point of the cone of the g_i: the support's g_i span V and cancel with positive weights,
    so any part in V is a non-negative combination of them.
    """
    others = [i for i in range(len(X)) if i not in support]
    if not others:
        return None
    _, Z, (U, sigma, V, lengths), _ = _affine_frame(X, support)  # 0 is in the hull, so U spans V
    t = V.T @ (Z.T @ b / lengths) / sigma  # P_V g0 in the basis U
    X_reduced = X[others] - (X[others] @ U) @ U.T
    b_reduced = b[others] - (X[others] @ U) @ t
    in_V = np.linalg.norm(X_reduced, axis=1) <= _TOLERANCE * np.linalg.norm(X[others], axis=1)  # up to rounding
    X_reduced[in_V], b_reduced[in_V] = 0.0, 0.0
    s_reduced = math.sqrt(s * s - t @ t)  # the same alpha as _face_minimiser's, which found it below s^2
    p_reduced = _solve_active_set(X_reduced, b_reduced, s_reduced)
    escape = np.zeros(len(X))
    escape[others] = p_reduced
    if _value(X_reduced, b_reduced, s_reduced, p_reduced) >= -_TOLERANCE * _terms_size(X, b, s, escape):
        return None
    # the support's weights nu put the part of x in V at -(||x'|| / s') P_V g0 - P_V sum_j p'_j g_j (in the basis U);
    # adding a multiple of the cancelling weights p makes them non-negative without moving x
    target = -(np.linalg.norm(p_reduced @ X_reduced) / s_reduced) * t - U.T @ (p_reduced @ X[others])
    nu = Z @ (V @ (target / sigma) / lengths)
    escape += nu + max(0.0, max(-nu[i] / p[i] for i in support)) * p
    return escape / escape.sum()


def _solve_active_set(X, b, s):
    """argmin_simplex Phi for gradients with coordinates X (m, r), s > 0: Wolfe's active-set method, exact like the
    enumeration of all 2^m - 1 faces but only visiting the faces on a path of decrease.

    Start at the best vertex. At the minimiser of Phi over the current face, Phi's gradient
    grad = b + s H p / ||G_p|| is constant on the support (= grad^T p = Phi(p), Phi being 1-homogeneous); if no
    vertex has a smaller gradient, the Frank-Wolfe gap Phi(p) - min_i grad_i, an upper bound on Phi(p) - Phi*, is
    zero and p is optimal. Otherwise add the vertex with the smallest gradient (it lies outside the face's affine
    hull, so the face stays non-degenerate) and descend on the larger face. Phi falls strictly at every step and
    each step ends at the face minimiser of its support, so no support comes back and the method stops, in
    practice after about one step per vertex of the final support. The kink G_p = 0 is handled by _leave_kink.
    """
    norms = np.linalg.norm(X, axis=1)
    start = int(np.argmin(b + s * norms))
    p, support, value = np.eye(len(X))[start], [start], float(b[start] + s * norms[start])
    seen = {(start,)}
    while True:
        x = p @ X
        length = np.linalg.norm(x)
        if length <= _TOLERANCE * (norms @ p):  # G_p = 0 up to rounding
            escape = _leave_kink(X, b, s, p, support)
            if escape is None:
                return p
            candidate, candidate_support = escape, [int(i) for i in np.flatnonzero(escape)]
        else:
            grad = b + s * (X @ x) / length
            j = int(np.argmin(grad))
            if grad[j] >= value - _TOLERANCE * _terms_size(X, b, s, p) or j in support:  # j in it: noise
                return p
            candidate, candidate_support = p, sorted(support + [j])
        candidate, candidate_support = _descend(X, b, s, candidate, candidate_support)
        # In exact arithmetic Phi falls at every step, if only by a hair (a huge gradient enters with a tiny weight),
        # so no support comes back; in floating point, a rise or a support seen before is rounding noise: stop.
        candidate_value = _value(X, b, s, candidate)
        if candidate_value > value or tuple(candidate_support) in seen:
            return p
        seen.add(tuple(candidate_support))
        p, support, value = candidate, candidate_support, candidate_value
