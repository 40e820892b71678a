"""Mimic (Karimireddy et al., ICLR 2022): the attackers copy the most extreme honest update, and a coordinate-wise
median is pulled towards that client."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from clients.attacks.mimic import Mimic, mimic_target
from strategies.median import Median
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_target_is_the_farthest_along_the_top_direction_and_the_median_moves_to_it():
    g = torch.Generator().manual_seed(0)
    benign = torch.randn(7, 50, generator=g) * 0.1
    benign[4] += torch.linspace(1.0, 2.0, 50)  # one heterogeneous client, far along its own direction
    assert mimic_target(benign) == 4
    crafted = Mimic().craft(benign, num_clients=10, num_attackers=3)
    assert torch.equal(crafted, benign[4])  # a real update, copied
    rule = Median()
    honest, _ = rule.aggregate_updates(benign, torch.ones(7))
    attacked, _ = rule.aggregate_updates(torch.cat([benign, crafted.expand(3, 50)]), torch.ones(10))
    shift = attacked - honest
    assert (attacked - benign[4]).norm() < (honest - benign[4]).norm()  # towards the copied client
    assert float(shift @ (benign[4] - honest)) > 0.5 * float(shift.norm() * (benign[4] - honest).norm())


def test_mimic_runs_omniscient_through_the_round_loop(tmp_path, server_identity):
    raw = {"name": "mimic", "seed": 0, "rounds": 2,
           "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.3, "num_clients": 6},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 6, "lr": 0.1},
           "attack": {"kind": "mimic", "client_ids": [0, 1], "knowledge": "omniscient"},
           "defense": {"strategy": "median"}}
    run_in_process(raw, tmp_path / "run")
    table = pd.read_csv(tmp_path / "run" / "clients.csv")
    for _, rows in table.groupby("round"):
        norms = rows.set_index("client")["update_norm"]
        assert norms[0] == norms[1]  # both attackers sent the same update ...
        assert any(abs(norms[c] - norms[0]) < 1e-6 for c in range(2, 6))  # ... an honest client's
