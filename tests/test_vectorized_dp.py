"""Vectorized cohorts under local DP (fedsec/training/stacked_dp_sgd.py, clients/vectorized.py, clients/dp.py): the
stacked DP-SGD kernel against fedsec's per-client DP-SGD epoch, and runs through fedsec's real round loop in cohort
mode (in process) whose rounds, per-client accounting and budget refusals equal the per-client run's."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from fedsec.models import build_model
from fedsec.privacy.dp_sgd import dp_sgd_epoch
from fedsec.training.stacked_dp_sgd import dp_train_stacked
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAW = {"name": "vectorized-dp", "seed": 5, "rounds": 3,
       "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0, "num_clients": 8},
       "model": {"name": "mlp"},
       "train": {"clients_per_round": 6, "local_epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9,
                 "weight_decay": 1e-3},
       "privacy": {"mode": "local", "epsilon": 4.0, "max_grad_norm": 1.0},
       "backend": {"messages": "cohort", "cohort_nodes": 2}}


@pytest.mark.parametrize(("name", "shape"), [("logreg", (64,)), ("cnn", (1, 28, 28))])
def test_stacked_dp_sgd_equals_each_clients_own_dp_sgd(name, shape):
    sizes = [37, 60, 5, 64]  # unequal: different q, steps and expected batch sizes; short clients run out of steps
    noise = [0.8, 1.1, 0.5, 2.0]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, *shape, generator=g) for n in sizes]
    ys = [torch.randint(0, 10, (n,), generator=g) for n in sizes]
    model = build_model(name, shape, 10, seed=0)
    result = dp_train_stacked(model, xs, ys, epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3,
                              max_grad_norm=1.0, noise_multipliers=noise,
                              generators=[torch.Generator().manual_seed(i) for i in range(4)])
    for i in range(4):
        alone = build_model(name, shape, 10, seed=0)
        optimizer = torch.optim.SGD(alone.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        generator, losses = torch.Generator().manual_seed(i), []
        entries = [dp_sgd_epoch(alone, optimizer, xs[i], ys[i], batch_size=16, max_grad_norm=1.0,
                                noise_multiplier=noise[i], generator=generator, losses=losses) for _ in range(2)]
        for key, p in alone.named_parameters():
            assert torch.allclose(result.params[key][i], p.detach(), rtol=0, atol=1e-5), (name, i, key)
        assert result.entries[i] == entries
        assert result.losses[i] == pytest.approx(sum(s for s, _ in losses) / sum(b for _, b in losses), rel=1e-5)


def test_the_kernel_refuses_mismatched_inputs():
    model = build_model("logreg", (4,), 3, seed=0)
    with pytest.raises(ValueError, match="one \\(x, y, noise multiplier, generator\\) per client"):
        dp_train_stacked(model, [torch.zeros(2, 4)], [torch.zeros(2, dtype=torch.long)], epochs=1, batch_size=2,
                         lr=0.1, max_grad_norm=1.0, noise_multipliers=[1.0, 1.0],
                         generators=[torch.Generator()])


def test_a_vectorized_dp_run_matches_the_per_client_run(tmp_path, server_identity):
    attacked = {**RAW, "attack": {"kind": "sign_flip", "client_ids": [2]}}
    plain = run_in_process(attacked, tmp_path / "plain", cohort_nodes=2)
    raw = {**attacked, "train": {**RAW["train"], "vectorize": True}}
    fast = run_in_process(raw, tmp_path / "fast", cohort_nodes=2)
    for column in ("accuracy", "loss", "train_loss", "epsilon"):
        assert (fast[column] - plain[column]).abs().max() < 1e-4, column
    clients = pd.read_csv(tmp_path / "fast" / "clients.csv")
    plain_clients = pd.read_csv(tmp_path / "plain" / "clients.csv")
    assert set(clients.loc[clients["client"] == 2, "vectorized"]) == {0.0}  # the attacker trains on its own
    assert set(clients.loc[clients["client"] != 2, "vectorized"]) == {1.0}
    assert (clients["update_norm"] - plain_clients["update_norm"]).abs().max() < 1e-4
    assert fast["epsilon"].max() <= RAW["privacy"]["epsilon"]


def test_a_client_out_of_budget_still_refuses_in_a_vectorized_cohort(tmp_path, server_identity):
    # a fixed noise multiplier that spends the budget in about two rounds: later rounds are refused
    raw = {**RAW, "rounds": 4, "privacy": {**RAW["privacy"], "epsilon": 5.0, "noise_multiplier": 1.0}}
    plain = run_in_process(raw, tmp_path / "plain", cohort_nodes=2)
    fast = run_in_process({**raw, "train": {**RAW["train"], "vectorize": True}}, tmp_path / "fast", cohort_nodes=2)
    plain_clients = pd.read_csv(tmp_path / "plain" / "clients.csv")
    clients = pd.read_csv(tmp_path / "fast" / "clients.csv")
    refused = clients["status"].str.contains("privacy budget exhausted")
    assert refused.any() and not refused.all()
    assert (refused == plain_clients["status"].str.contains("privacy budget exhausted")).all()
    assert set(clients.loc[~refused, "vectorized"]) == {1.0}
    assert (fast["accuracy"] - plain["accuracy"]).abs().max() < 1e-4
