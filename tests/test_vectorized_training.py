"""Vectorized cohorts (fedsec/training/vectorized.py, clients/vectorized.py): the stacked kernel against the
per-client loop, and runs through fedsec's real round loop in cohort mode (in process) where the honest clients train
together, attackers and BatchNorm models fall back (recorded), and rounds.csv matches the per-client run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from fedsec.models import build_model, channels_last_on_cpu
from fedsec.training.local import train_local
from fedsec.training.vectorized import train_stacked, why_not_vectorized
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RAW = {"name": "vectorized", "seed": 4, "rounds": 3,
       "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0, "num_clients": 8},
       "model": {"name": "mlp"},
       "train": {"clients_per_round": 8, "local_epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
                 "weight_decay": 1e-3},
       "backend": {"messages": "cohort", "cohort_nodes": 2}}


@pytest.mark.parametrize("per_client_layout", [lambda m: m, channels_last_on_cpu], ids=["contiguous", "actors"])
@pytest.mark.parametrize(("name", "shape"), [("logreg", (64,)), ("mlp", (64,)), ("cnn", (1, 28, 28))])
def test_stacked_training_equals_one_client_after_another(name, shape, per_client_layout):
    # "actors": the per-client path as a fedsec actor runs it (convolutions channels-last, fedsec/models/layout.py)
    sizes = [37, 60, 5, 64]  # unequal: short clients run out of steps and are masked
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, *shape, generator=g) for n in sizes]
    ys = [torch.randint(0, 10, (n,), generator=g) for n in sizes]
    model = build_model(name, shape, 10, seed=0)
    result = train_stacked(model, xs, ys, epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3,
                           generators=[torch.Generator().manual_seed(i) for i in range(4)])
    for i in range(4):
        alone = per_client_layout(build_model(name, shape, 10, seed=0))
        r = train_local(alone, xs[i], ys[i], epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3,
                        generator=torch.Generator().manual_seed(i))
        for key, p in alone.named_parameters():
            assert torch.allclose(result.params[key][i], p.detach(), rtol=0, atol=1e-5), (name, i, key)
        assert result.losses[i] == pytest.approx(r.loss, rel=1e-5) and result.num_steps[i] == r.num_steps


def test_clients_smaller_than_a_batch_are_not_padded_to_it():
    # 10,000 clients of 6 examples at batch 32 (the peers' logreg row): a step holds the longest client's 6 columns,
    # not 32 of which 26 are padding, and each client still trains as it would alone
    sizes = [6, 3, 6]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 64, generator=g) for n in sizes]
    ys = [torch.randint(0, 10, (n,), generator=g) for n in sizes]
    model = build_model("logreg", (64,), 10, seed=0)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    result = train_stacked(model, xs, ys, epochs=2, batch_size=32, lr=0.05, momentum=0.9,
                           generators=[torch.Generator().manual_seed(i) for i in range(3)])
    assert seen == [6, 6]  # one step per epoch, 6 examples wide (per client, under vmap)
    for i in range(3):
        alone = build_model("logreg", (64,), 10, seed=0)
        train_local(alone, xs[i], ys[i], epochs=2, batch_size=32, lr=0.05, momentum=0.9,
                    generator=torch.Generator().manual_seed(i))
        for key, p in alone.named_parameters():
            assert torch.allclose(result.params[key][i], p.detach(), rtol=0, atol=1e-6), (i, key)


def test_models_with_running_statistics_or_randomness_are_refused():
    assert "BatchNorm1d" in why_not_vectorized(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    assert "Dropout" in why_not_vectorized(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    assert why_not_vectorized(nn.Linear(4, 4)) == ""


def test_a_vectorized_run_matches_the_per_client_run_and_records_the_fallbacks(tmp_path, server_identity):
    attacked = {**RAW, "attack": {"kind": "label_flip", "client_ids": [3]}}
    plain = run_in_process(attacked, tmp_path / "plain", cohort_nodes=2)
    raw = {**attacked, "train": {**RAW["train"], "vectorize": True}}
    fast = run_in_process(raw, tmp_path / "fast", cohort_nodes=2)
    again = run_in_process(raw, tmp_path / "again", cohort_nodes=2)
    pd.testing.assert_frame_equal(fast, again)  # reproducible run to run
    for column in ("accuracy", "loss", "train_loss"):
        assert (fast[column] - plain[column]).abs().max() < 1e-4, column
    clients = pd.read_csv(tmp_path / "fast" / "clients.csv")
    assert set(clients.loc[clients["client"] == 3, "vectorized"]) == {0.0}  # the attacker trains on its own
    assert set(clients.loc[clients["client"] != 3, "vectorized"]) == {1.0}
    plain_clients = pd.read_csv(tmp_path / "plain" / "clients.csv")
    assert (clients["update_norm"] - plain_clients["update_norm"]).abs().max() < 1e-4
    assert "vectorized" not in plain_clients.columns


def test_a_run_whose_recipe_cannot_stack_trains_client_by_client(tmp_path, server_identity):
    raw = {**RAW, "train": {**RAW["train"], "vectorize": True, "algorithm": "fedprox", "proximal_mu": 0.1}}
    rows = run_in_process(raw, tmp_path / "prox", cohort_nodes=2)
    clients = pd.read_csv(tmp_path / "prox" / "clients.csv")
    assert set(clients["vectorized"]) == {0.0} and rows["accuracy"].notna().all()
