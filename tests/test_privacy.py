"""Central DP: accountant values, noise calibration, the budget guard, DP-FedAvg's kernel, and bad configs."""

from __future__ import annotations

import pytest
import torch

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.privacy import PrivacyLedger, calibrate_noise, epsilon_after
from fedsec.strategies.dp_fedavg import dp_fedavg_aggregate


def test_rdp_accountant_matches_opacus_known_value():
    # Opacus' RDP accountant: noise 1.5, sample rate 0.04, 2250 steps, delta 1e-5 -> epsilon 7.329
    eps = epsilon_after(noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=1e-5)
    assert eps == pytest.approx(7.329, abs=5e-4)
    assert epsilon_after(noise_multiplier=1.5, sample_rate=0.04, steps=0, delta=1e-5) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibrated_noise_spends_at_most_the_budget(accountant):
    z = calibrate_noise(epsilon=4.0, delta=1e-5, sample_rate=0.1, steps=50, accountant=accountant)
    spent = epsilon_after(noise_multiplier=z, sample_rate=0.1, steps=50, delta=1e-5, accountant=accountant)
    assert 3.9 <= spent <= 4.0


def test_ledger_never_lets_epsilon_exceed_the_budget():
    # noise 2, q = 1, delta 1e-3: epsilon after 1..4 rounds = 1.546, 2.330, 2.971, 3.537
    ledger = PrivacyLedger(noise_multiplier=2.0, sample_rate=1.0, delta=1e-3, budget=3.0)
    assert ledger.rounds_within_budget(10) == 3
    spent = []
    while ledger.allows(1):
        spent.append(ledger.spend(1))
    assert len(spent) == 3 and spent[-1] == pytest.approx(2.9714, abs=1e-3) and max(spent) <= 3.0


def test_dp_fedavg_clips_weights_uniformly_and_divides_by_k():
    updates = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    # norms 5 and 1, C = 1: (0.6, 0.8) + (0, 1) = (0.6, 1.8); k = 3 fixed denominator -> (0.2, 0.6)
    agg, weights = dp_fedavg_aggregate(updates, clip_norm=1.0, noise_multiplier=0.0, expected_clients=3,
                                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(agg, torch.tensor([0.2, 0.6]))
    torch.testing.assert_close(weights, torch.tensor([0.2 / 3, 1 / 3]))
    noisy, _ = dp_fedavg_aggregate(updates, clip_norm=1.0, noise_multiplier=2.0, expected_clients=3,
                                   generator=torch.Generator().manual_seed(0))
    expected_noise = 2.0 * torch.randn(2, generator=torch.Generator().manual_seed(0)) / 3
    torch.testing.assert_close(noisy, torch.tensor([0.2, 0.6]) + expected_noise)


def central(**privacy) -> dict:
    return {"data": {"dataset": "digits", "num_clients": 10}, "train": {"clients_per_round": 5},
            "privacy": {"mode": "central", "delta": 1e-3, **privacy}}


def local(**privacy) -> dict:
    return {"data": {"dataset": "fashion-mnist", "num_clients": 20}, "privacy": {"mode": "local", **privacy}}


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        (central(epsilon=0), ["privacy.epsilon", "greater than 0"]),
        (central(epsilon=-1), ["privacy.epsilon", "greater than 0"]),
        (central(delta=0.2), ["privacy.delta=0.2", "1 / data.num_clients = 0.1"]),
        (central(clip_norm=0), ["privacy.clip_norm", "greater than 0"]),
        (central(noise_multiplier=0.1, epsilon=1), ["privacy.noise_multiplier=0.1", "one round already"]),
        ({**central(), "defense": {"strategy": "median"}}, ["privacy.mode='central'", "'median'", "fedavg"]),
        (local(delta=1e-3), ["privacy.delta=0.001", "local DP", "0.000333"]),
        (local(max_grad_norm=0), ["privacy.max_grad_norm", "greater than 0"]),
        (local(epsilon=0), ["privacy.epsilon", "greater than 0"]),
        (local(grad_sample_mode="magic"), ["privacy.grad_sample_mode", "'magic'"]),
    ],
)
def test_bad_privacy_configs(raw, fragments):
    with pytest.raises(ConfigError) as info:
        plan_from_dict(raw)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_privacy_plan_calibrates_to_the_budget():
    plan = plan_from_dict({**central(epsilon=2.0), "rounds": 20}).privacy
    assert plan.sample_rate == 0.5 and plan.rounds_within_budget == 20
    assert 1.95 <= plan.planned_epsilon <= 2.0


def test_local_dp_history_round_trips_through_flower_state():
    from flwr.app import RecordDict

    from fedsec.clients.dp import load_history, save_history

    state = RecordDict()
    assert load_history(state) == []
    save_history(state, [(1.1, 0.05, 40), (0.9, 0.05, 20)])
    assert load_history(state) == [(1.1, 0.05, 40), (0.9, 0.05, 20)]
