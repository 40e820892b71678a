"""Constrain-and-scale (Bagdasaryan et al., AISTATS 2020): the attacker's local training adds the anomaly term
(fedsec.training.local.objective_gradient), which pulls its update towards the benign reference, and the update is
then boosted only up to the bound it estimates from the clean updates it knows."""

from __future__ import annotations

import doctest
import math

import pandas as pd
import pytest
import torch

import fedsec.clients.attacks.constrain_and_scale as cas
from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.training.local import objective_gradient, train_local
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_doctests_hold():
    assert doctest.testmod(cas).failed == 0


def test_the_loss_by_hand_and_bad_keys():
    u, r = torch.tensor([4.0, 0.0]), torch.tensor([0.0, 2.0])
    loss = cas.constrain_and_scale_loss(torch.tensor(1.0), u, r, alpha=0.25)
    torch.testing.assert_close(loss, torch.tensor(0.25 + 0.75 * math.sqrt(20)))
    with pytest.raises(ValueError, match=r"attack\.alpha"):
        cas.constrain_and_scale_loss(torch.tensor(1.0), u, r, alpha=2.0)
    with pytest.raises(ConfigError, match=r"attack\.alpha"):
        plan_from_dict({"data": {"dataset": "digits", "num_clients": 10}, "train": {"clients_per_round": 5},
                        "attack": {"kind": "constrain_and_scale", "fraction": 0.2, "alpha": 1.5}})
    assert cas.ConstrainAndScale(cas.ConstrainAndScaleParams(alpha=1.0)).local_objective(None) is None


def test_the_objective_gradient_is_alpha_times_the_data_gradient_plus_the_penalty_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))  # a buffer sits between parameters
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    reference = torch.arange(sum(v.numel() for v in start.values()), dtype=torch.float32) / 10
    attack = cas.ConstrainAndScale(cas.ConstrainAndScaleParams(alpha=0.25))
    objective = attack.local_objective(reference.reshape(1, -1))
    # the hook anchors at the parameters it sees when built: rebuild it at the start, then move
    model.load_state_dict(start)
    add = objective_gradient(model, objective)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    add()
    delta = torch.cat([(model.state_dict()[k] - start[k]).flatten() if k not in ("1.running_mean", "1.running_var",
                       "1.num_batches_tracked") else torch.zeros(start[k].numel()) for k in start])
    unit = (delta - reference) / torch.linalg.vector_norm(delta - reference)
    offset = 0
    for name, value in start.items():
        size = value.numel()
        param = dict(model.named_parameters()).get(name)
        if param is not None:
            torch.testing.assert_close(param.grad.flatten(), 0.25 + 0.75 * unit[offset:offset + size])
        offset += size


def test_training_with_the_objective_pulls_the_update_towards_the_reference():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:200] / 16, dtype=torch.float32), torch.tensor(y[:200])

    def trained_update(objective):
        model = torch.nn.Linear(64, 10)
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        train_local(model, x, y, epochs=2, batch_size=20, lr=0.5, generator=torch.Generator().manual_seed(0),
                    objective=objective(model) if objective else None)
        return torch.cat([p.detach().flatten() for p in model.state_dict().values()])

    plain = trained_update(None)
    reference = -plain  # the opposite direction: what a detector would call benign here
    attack = cas.ConstrainAndScale(cas.ConstrainAndScaleParams(alpha=0.5))
    pulled = trained_update(lambda _m: attack.local_objective(reference.reshape(1, -1)))
    assert cas.anomaly_distance(pulled, reference) < 0.8 * cas.anomaly_distance(plain, reference)


def _run(tmp_path, attack: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = {"name": "cas", "seed": 0, "rounds": 2,
           "data": {"dataset": "digits", "partition": "iid", "num_clients": 5},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 5, "lr": 0.1},
           "attack": {"client_ids": [0], "target": 0, **attack},
           "defense": {"strategy": "fedavg"}}
    out = tmp_path / attack["kind"]
    rounds = run_in_process(raw, out)
    return rounds, pd.read_csv(out / "clients.csv")


def test_a_real_run_stays_at_the_bound_its_clean_update_gives(tmp_path, server_identity):
    _, plain = _run(tmp_path, {"kind": "backdoor", "boost": 5.0})
    rounds, aware = _run(tmp_path, {"kind": "constrain_and_scale", "alpha": 0.5})
    assert rounds["attack_success_rate"].notna().all() and rounds["attack_success_rate"].between(0, 1).all()
    aware_norm = aware[aware.malicious == 1].set_index("round")["update_norm"]
    plain_norm = plain[plain.malicious == 1].set_index("round")["update_norm"]
    honest = aware[aware.malicious == 0].groupby("round")["update_norm"].median()
    # the bound is the norm of its own clean update (no colluders): about an honest client's norm, never 5x it
    assert ((aware_norm > 0.5 * honest) & (aware_norm < 1.5 * honest)).all()
    assert (plain_norm > 3 * honest).all()
