"""toy_pareto.py: the theory's claims on problems whose answers are known, and the checker's ability to fail."""

import functools

import numpy as np
import pytest
import torch

import toy_pareto
from harness.command_line import INPUT_ERRORS
from toy_pareto import (check_quadratics, check_toy, check_worked_example, descend, gamma, min_norm_ratio, pareto_set,
                        random_quadratics, run_cagrad_toy, toy_gradients, toy_losses, toy_table, worked_example)


def test_worked_example_reproduces_the_spec_numbers():
    """The one place the worked example's numbers (docs/method.md) are asserted: lam* (also by a grid search),
    rho, rho~, Gamma, Gamma~."""
    assert [claim.name for claim in check_worked_example(worked_example()) if not claim.passed] == []


def test_worked_example_check_rejects_a_number_off_in_the_last_printed_digit():
    values = dict(worked_example(), rho_clipped=0.9440)
    failed = [claim.name for claim in check_worked_example(values) if not claim.passed]
    assert failed == ["worked example: rho_clipped = 0.9433"]


def test_gamma_floor_and_its_independence_of_rho_at_eta_one_over_L():
    c = 0.4
    assert gamma(-1.0, c, 1.0) == pytest.approx((1 - c * c) / 2)  # the worst case of Thm 3.1
    assert gamma(0.7, c, 1.0) == pytest.approx(gamma(-0.3, c, 1.0))  # at L eta = 1 the clip cannot help
    # By hand: 1 + 0.4 * 0.5 - 0.25 * (1 + 0.16 + 0.4) = 1.2 - 0.39 = 0.81.
    assert gamma(0.5, c, 0.5) == pytest.approx(0.81)


def test_toy_losses_at_hand_computed_points():
    # x = (-7, 2): c1 = tanh(1) = 0.7615941560, c2 = max(tanh(-1), 0) = 0, tanh(-2) = -0.9640275801.
    #   f1 = c1 (log|0.5 (7 - 7) + 0.9640275801| + 6) = 0.7615941560 * (-0.0366354951 + 6) = 4.5416636
    #   f2 = c1 (log|0.5 (7 + 3) - 0.9640275801 + 2| + 6) = 0.7615941560 * (log 6.0359724199 + 6) = 5.9387109
    # x = (7, -8): c1 = 0, c2 = tanh(4) = 0.9993292997.
    #   f1 = c2 ((0^2 + 0.1 * 0^2) / 10 - 20) = -19.9865860,  f2 = c2 ((-14)^2 / 10 - 20) = c2 * (-0.4) = -0.3997317
    f1, f2 = toy_losses(torch.tensor([[-7.0, 2.0], [7.0, -8.0]], dtype=torch.float64))
    assert f1.tolist() == pytest.approx([4.5416636, -19.9865860], abs=1e-6)
    assert f2.tolist() == pytest.approx([5.9387109, -0.3997317], abs=1e-6)


def test_the_quoted_segment_is_nearly_pareto_critical_and_points_off_it_are_not():
    x1 = torch.tensor([-6.0, -3.0, 0.0, 3.0, 6.0], dtype=torch.float64)
    _, G = toy_gradients(torch.stack([x1, torch.full_like(x1, -8.3552)], 1))
    assert torch.all(G[:, 0, 0] * G[:, 1, 0] < 0)  # the x1-gradients point opposite ways
    assert torch.all(G[:, :, 1].abs() < 0.01)  # the x2-gradients (nearly) vanish
    assert torch.all(G[:, :, 0].abs().amax(1) > 1.0)  # ... while the x1-gradients do not
    assert max(min_norm_ratio(G[n] @ G[n].T) for n in range(len(x1))) < 1e-3
    # Beyond x1 = 7 both objectives want x1 smaller; above the segment both want x2 lower: not Pareto-critical.
    _, G = toy_gradients(torch.tensor([[8.0, -8.3552], [0.0, -6.0]], dtype=torch.float64))
    assert min(min_norm_ratio(G[n] @ G[n].T) for n in range(2)) > 0.05


def test_exact_pareto_curve_is_pareto_critical_and_hugs_the_spec_segment():
    points = pareto_set(torch.linspace(-7, 7, 15))
    _, G = toy_gradients(points)
    assert max(min_norm_ratio(G[n] @ G[n].T) for n in range(len(points))) < 1e-7
    assert np.abs(points[:, 1] + 8.3552).max() < 0.1
    assert pareto_set(torch.zeros(1))[0, 1] == pytest.approx(-8.3552, abs=1e-3)


def test_quadratic_claims_hold_on_a_small_instance():
    result = check_quadratics(dims=(2, 10), seeds=range(2), max_steps=2000)
    assert [claim.name for claim in result["claims"] if not claim.passed] == []
    assert {row["reached"] for row in result["rows"]} == {"2/2"}


def test_raco_certifies_every_step_never_lowers_rho_and_reaches_theta_star():
    problem = random_quadratics(10, seed=3)
    eta = 0.5 / problem["L"]
    run, steps_to_tol = descend(problem, "raco", 0.4, eta, max_steps=2000, tol=1e-10)
    assert steps_to_tol is not None
    certified = run["excess"] - eta * gamma(run["rho"], run["c"], 0.5) * run["g0_sq"]
    assert np.all(run["excess_next"] <= certified + 1e-9 * run["excess"])
    assert np.all(run["rho_clipped"] >= run["rho_unclipped"] - 1e-12)
    assert run["clip_changed"].any()  # otherwise the two checks above would say nothing about the clip


def test_certificate_check_catches_an_overstated_gamma(monkeypatch):
    honest = toy_pareto.gamma
    monkeypatch.setattr(toy_pareto, "gamma", lambda rho, c, L_eta: honest(rho, c, L_eta) + 0.5)
    result = check_quadratics(dims=(10,), seeds=range(1), max_steps=500)
    failed = [claim.name for claim in result["claims"] if not claim.passed]
    assert failed and all("certificate" in name for name in failed)


def test_toy_weighted_methods_reach_their_targets_and_mgda_does_not():
    result = run_cagrad_toy(methods=("lw", "raco", "mgda"), starts=((-8.5, -5.0), (9.0, 9.0)), steps=500)
    rows = toy_table(result)
    assert all(claim.passed for claim in check_toy(rows))
    assert max(r["x1_error"] for r in rows if r["method"] == "mgda") > 1.0  # MGDA ignores w


# main, with a shorter toy so that these stay fast; the exit code must follow the claims.
_SHORT_TOY = functools.partial(run_cagrad_toy, methods=("lw", "raco"), starts=((-8.5, -5.0),))


def test_main_passes_and_writes_the_figures(monkeypatch, tmp_path):
    monkeypatch.setattr(toy_pareto, "run_cagrad_toy", _SHORT_TOY)
    assert toy_pareto.main(["--quick", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "quadratics_convergence.png", "toy_objective_space.png", "toy_parameter_space.png"]


def test_main_exits_nonzero_and_names_the_failed_claim(monkeypatch, tmp_path, capsys):
    honest = toy_pareto.gamma
    monkeypatch.setattr(toy_pareto, "gamma", lambda rho, c, L_eta: honest(rho, c, L_eta) + 0.5)
    monkeypatch.setattr(toy_pareto, "run_cagrad_toy", _SHORT_TOY)
    monkeypatch.setattr(toy_pareto, "plot_toy", lambda result, out: [])
    monkeypatch.setattr(toy_pareto, "plot_quadratics", lambda traces, out: out)
    assert toy_pareto.main(["--quick", "--out", str(tmp_path)]) == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("CLAIM FAILED")]
    # Gamma feeds the per-step certificate and the worked example, nothing else: exactly those must fail.
    assert any("certificate" in line for line in failures)
    assert all("certificate" in line or "worked example: gamma" in line for line in failures)


def test_bad_flags_are_one_line_before_anything_runs():
    for flags, message in ((["--seeds", "0"], "--seeds: invalid value 0 (see --help)"),  # would check nothing
                           (["--c", "1"], "--c: expected a value in [0, 1), got 1.0"),
                           (["--eta-scale", "2"], "--eta-scale: invalid value 2.0 (see --help)"),
                           (["--out", ""], "--out: empty; expected a directory")):
        with pytest.raises(INPUT_ERRORS) as error:
            toy_pareto.main(flags)
        assert str(error.value) == message
