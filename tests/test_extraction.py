"""Extraction attacks over real HTTP: equation solving, Knockoff; hyperparameter stealing; result directories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_serving_support import ROLES, make_keys, write_digits_run
from torch.nn import functional as F

from fedsec.data import load_digits
from fedsec.extraction import (
    RemoteModel,
    equation_solving_attack,
    knockoff_extract,
    logreg_parameters,
    relative_parameter_error,
    solve_softmax_equations,
    stationary_l2_strength,
    steal_l2_regularisation,
    write_result_dir,
)
from fedsec.models import build_model
from fedsec.serving import AccessPolicy, LocalServer, create_app, load_final_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _server(model):
    keys, entries = make_keys({role: {"role": role} for role in ROLES})
    app = create_app(model, AccessPolicy.from_dict({"roles": ROLES, "keys": entries}))
    return LocalServer(app), keys


def test_solver_golden_two_classes():
    # p1/p0 = exp(2x + 1) at x = 0, 1: log-odds 1, 3 -> w1 - w0 = 2, b1 - b0 = 1; row 0 fixed at 0.
    x = np.array([[0.0], [1.0]])
    odds = np.exp(np.array([1.0, 3.0]))
    p = np.stack([1 / (1 + odds), odds / (1 + odds)], axis=1)
    w, b, deficiency = solve_softmax_equations(x, p)
    np.testing.assert_allclose(w, [[0.0], [2.0]], atol=1e-12)
    np.testing.assert_allclose(b, [0.0, 1.0], atol=1e-12)
    assert deficiency == 0
    # shift invariance: adding a row vector to all classes changes nothing
    assert relative_parameter_error(w + 5.0, b - 3.0, w, b) == pytest.approx(0.0, abs=1e-12)


def test_equation_solving_recovers_logreg_from_probabilities_not_labels(tmp_path):
    served = load_final_model(write_digits_run(tmp_path, model="logreg", epochs=3))
    truth = logreg_parameters(served.module)
    server, keys = _server(served)
    with server as url:
        remote = RemoteModel(url, key=keys["analyst"], batch_size=128)
        ok = equation_solving_attack(remote, input_shape=(1, 8, 8), num_classes=10, true_parameters=truth)
        assert ok.status == "ok" and ok.queries_spent == 65  # d + 1
        assert ok.relative_error < 1e-4
        labels_only = RemoteModel(url, key=keys["app"], batch_size=128)
        failed = equation_solving_attack(labels_only, input_shape=(1, 8, 8), num_classes=10, true_parameters=truth)
    assert failed.status == "failed" and failed.weights is None and failed.relative_error is None
    assert "top-1 labels" in failed.reason and "needs probabilities" in failed.reason


def test_too_few_queries_is_reported_not_solved(tmp_path):
    served = load_final_model(write_digits_run(tmp_path, model="logreg", epochs=1))
    server, keys = _server(served)
    with server as url:
        res = equation_solving_attack(RemoteModel(url, key=keys["analyst"]), input_shape=(1, 8, 8), num_classes=10,
                                      num_queries=20)
    assert res.status == "failed" and "rank" in res.reason


def _decayed_logreg(weight_decay):
    """A digits logreg trained with L-BFGS to the optimum of cross-entropy + weight_decay / 2 * ||theta||^2 (PyTorch's
    weight_decay on every parameter), with its training inputs and labels."""
    ds = load_digits()
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    model = build_model("logreg", ds.input_shape, 10, seed=0)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=300, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + weight_decay / 2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return model, x, y


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-2])
def test_hyperparameter_stealing_within_10_percent(weight_decay):
    model, x, y = _decayed_logreg(weight_decay)
    est = steal_l2_regularisation(model, x, y)
    assert est.weight_decay == pytest.approx(weight_decay, rel=0.10)
    assert est.lam == pytest.approx(est.weight_decay / 2)
    assert est.residual < 0.05


def test_stationary_strength_golden():
    # theta = (1, 2), grad = (-0.2, -0.4) = -2 * 0.1 * theta -> lambda = 0.1 exactly, residual 0.
    lam, residual = stationary_l2_strength(torch.tensor([1.0, 2.0]), torch.tensor([-0.2, -0.4]))
    assert lam == pytest.approx(0.1) and residual == pytest.approx(0.0, abs=1e-12)


def test_knockoff_reaches_agreement_and_writes_result_dir(tmp_path):
    served = load_final_model(write_digits_run(tmp_path / "run", model="cnn", epochs=5))
    ds = load_digits()
    eval_x, eval_y = ds.x_test[:225], ds.y_test[:225]
    target_labels = served.probabilities(torch.from_numpy(eval_x)).argmax(1).numpy()
    server, keys = _server(served)
    with server as url:
        remote = RemoteModel(url, key=keys["analyst"], batch_size=100)
        res = knockoff_extract(remote, ds.x_train, budget=800, eval_x=eval_x, eval_y=eval_y,
                               target_labels=target_labels, epochs=10, seed=0)
    assert res.status == "ok" and res.queries_spent == 800 and res.refused_requests == 0
    assert [p.queries for p in res.curve] == [100, 200, 400, 800]
    assert res.final_agreement > 0.85 and res.final_agreement >= res.curve[0].agreement
    out = write_result_dir(res, tmp_path / "extract")
    saved = json.loads((out / "result.json").read_text())
    assert saved["queries_spent"] == 800 and saved["final_agreement"] == res.final_agreement
    assert (out / "curve.csv").read_text().splitlines()[0] == "queries,accuracy,agreement"
    assert (out / "curve.png").stat().st_size > 1000


def test_cli_extract_equation_writes_result_dir(tmp_path):
    import typer
    from typer.testing import CliRunner

    from fedsec.serving.cli import register

    run_dir = write_digits_run(tmp_path / "run", model="logreg", epochs=2)
    server, keys = _server(load_final_model(run_dir))
    app = typer.Typer()
    register(app)
    with server as url:
        args = ["attack", "extract", url, "--method", "equation", "--budget", "520", "--run-dir", str(run_dir)]
        ok = CliRunner().invoke(app, [*args, "--key", keys["analyst"], "--out", str(tmp_path / "ok")])
        top1 = CliRunner().invoke(app, [*args, "--key", keys["app"], "--out", str(tmp_path / "top1")])
        few = CliRunner().invoke(app, [*args[:5], "--budget", "64", "--key", keys["analyst"], "--out",
                                       str(tmp_path / "few")])
    assert ok.exit_code == 0 and top1.exit_code == 0 and few.exit_code == 0, ok.output + top1.output + few.output
    good = json.loads((tmp_path / "ok" / "result.json").read_text())
    # --budget 520 = 8 (d + 1): every query is an equation of the least-squares solve (it used to stop at d + 1 =
    # 65, where float32 answers leave a relative error of ~1e-5)
    assert good["status"] == "ok" and good["queries_spent"] == 520 and good["details"]["answers_used"] == 520
    assert good["details"]["relative_parameter_error"] < 1e-6
    short = json.loads((tmp_path / "few" / "result.json").read_text())  # 64 < d + 1: refused before any query
    assert short["status"] == "failed" and short["queries_spent"] == 0 and "num_queries >= 65" in short["reason"]
    assert (tmp_path / "ok" / "recovered_parameters.npz").exists()
    bad = json.loads((tmp_path / "top1" / "result.json").read_text())
    assert bad["status"] == "failed" and "needs probabilities" in bad["reason"]


def test_equation_solving_precision_grows_with_the_budget(tmp_path):
    """Least squares over all answers: 8 (d + 1) queries beat d + 1 and reach a relative error below 1e-6."""
    served = load_final_model(write_digits_run(tmp_path, model="logreg", epochs=3))
    truth = logreg_parameters(served.module)
    server, keys = _server(served)
    errors = {}
    with server as url:
        for factor in (1, 8):
            remote = RemoteModel(url, key=keys["analyst"], batch_size=256)
            res = equation_solving_attack(remote, input_shape=(1, 8, 8), num_classes=10, num_queries=65 * factor,
                                          true_parameters=truth)
            assert res.status == "ok" and res.queries_spent == res.answers_used == 65 * factor
            errors[factor] = res.relative_error
    assert errors[8] < 1e-6 and errors[8] < errors[1] / 3, errors


def _decayed_logreg_run(run_dir, weight_decay):
    """A digits logreg trained to its optimum with L2 (PyTorch's weight_decay on every parameter), written as a run
    directory whose config.toml states the truth."""
    from fedsec.results.model_file import save_final_model

    model, _, _ = _decayed_logreg(weight_decay)
    save_final_model(run_dir, model, model_name="logreg", dataset="digits", input_shape=load_digits().input_shape,
                     num_classes=10, server_round=1, normalisation=None)
    (run_dir / "config.toml").write_text(f"[train]\nweight_decay = {weight_decay}\n")
    return run_dir


def test_cli_hyperparameters_steals_the_weight_decay(tmp_path):
    import typer
    from typer.testing import CliRunner

    from fedsec.serving.cli import register

    run_dir = _decayed_logreg_run(tmp_path / "run", 0.01)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["attack", "hyperparameters", str(run_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["weight_decay"] == pytest.approx(0.01, rel=0.10) and saved["true_weight_decay"] == 0.01
    assert saved["relative_error"] < 0.10 and saved["residual"] < 0.05
    assert saved["examples"] == len(load_digits().x_train)
    # a model that was never trained to that objective: the residual says the estimate is not to be trusted
    untrained = tmp_path / "untrained"
    from fedsec.results.model_file import save_final_model

    ds = load_digits()
    save_final_model(untrained, build_model("logreg", ds.input_shape, 10, seed=1), model_name="logreg",
                     dataset="digits", input_shape=ds.input_shape, num_classes=10, server_round=0,
                     normalisation=None)
    noisy = CliRunner().invoke(app, ["attack", "hyperparameters", str(untrained), "--examples", "200"])
    assert noisy.exit_code == 0 and "not reliable" in noisy.output
    assert json.loads(noisy.stdout.splitlines()[0])["examples"] == 200
    missing = CliRunner().invoke(app, ["attack", "hyperparameters", str(tmp_path / "nothing")])
    assert missing.exit_code == 2
