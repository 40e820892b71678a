"""The count lie (one client claims 1e6 examples, the others 50) under each weighting policy.

Golden values by hand: with k = 10 clients, 9 claiming 50 and a liar claiming 1e6, the liar's FedAvg weight is
1e6 / (1e6 + 450) = 0.99955 as reported, min(1e6, 4 x 50) / (200 + 450) = 4/13 capped at 4 x the median, and 1/10
uniform. The median is the lower median of the claims (50), which the liar cannot move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_messages import arrays_of, reply, started

from fedsec.arrays import record_to_vector
from fedsec.clients.attacks.count_lie import CountLie, CountLieParams
from fedsec.strategies import FedAvg, GeometricMedian, Krum, Median, MultiKrum, NormClipping, StrategyConfigError
from fedsec.strategies._trust import counted_examples

pytestmark = pytest.mark.usefixtures("server_identity")
SHAPES = {"w": (2, 2)}
LIAR = 9


def round_with_liar(strategy, *, liar_shift: float, claimed: float = 1e6, seed: int = 0):
    """9 honest updates around 0.1 (claiming 50) and the liar's (claiming ``claimed``) at honest + liar_shift;
    returns the projection t of the aggregate on the liar's direction (0 = honest mean, 1 = the liar's update)
    and the strategy's decisions."""
    rng = np.random.default_rng(seed)
    honest = [0.1 + 0.01 * rng.normal(size=(2, 2)) for _ in range(9)]
    mean = np.mean(honest, axis=0)
    liar = mean + liar_shift
    replies = [reply(100 + i, i, {"w": u}, num_examples=50) for i, u in enumerate(honest)]
    replies.append(reply(100 + LIAR, LIAR, {"w": liar}, num_examples=claimed))
    strategy = started(strategy, arrays_of({"w": np.zeros((2, 2))}))
    arrays, _ = strategy.aggregate_train(1, replies)
    aggregate = record_to_vector(arrays).double().numpy()
    direction = (liar - mean).reshape(-1)
    t = float((aggregate - mean.reshape(-1)) @ direction / (direction @ direction))
    return t, strategy.last_report.decisions


@pytest.mark.parametrize(("weighting", "expected"), [("reported", 1e6 / (1e6 + 450)), ("capped", 4 / 13),
                                                     ("uniform", 0.1)])
def test_fedavg_count_lie_is_bounded_by_the_policy(weighting, expected):
    t, decisions = round_with_liar(FedAvg(device="cpu", weighting=weighting), liar_shift=1.0)
    assert t == pytest.approx(expected, rel=1e-4)
    assert decisions[LIAR].weight == pytest.approx(expected, rel=1e-6)
    assert decisions[LIAR].num_examples == 1_000_000  # the claim is recorded as made
    assert decisions[LIAR].counted_examples == {"reported": 1e6, "capped": 200.0, "uniform": 1.0}[weighting]


@pytest.mark.parametrize("weighting", ["reported", "capped"])
def test_norm_clipping_count_lie_weight(weighting):
    _, decisions = round_with_liar(NormClipping(device="cpu", clip_norm=10.0, weighting=weighting), liar_shift=1.0)
    expected = 1e6 / (1e6 + 450) if weighting == "reported" else 4 / 13
    assert decisions[LIAR].weight == pytest.approx(expected, rel=1e-6)


def test_geomed_far_liar_owns_the_median_only_when_counts_are_trusted():
    # the liar holds 1e6 / (1e6 + 450) > 1/2 of the weight as reported: the geometric median sits on it; capped it
    # holds 4/13 < 1/2 and the median stays with the honest cluster (t: 1.00 vs 0.01, as
    # benchmarks/bench_count_lie.py measures it)
    t_reported, _ = round_with_liar(GeometricMedian(device="cpu", weighting="reported", iterations=10),
                                    liar_shift=10.0)
    t_capped, _ = round_with_liar(GeometricMedian(device="cpu", iterations=10), liar_shift=10.0)
    assert t_reported > 0.99
    assert 0 <= t_capped < 0.02


def test_multikrum_selected_liar_is_capped():
    # the liar sends an honest-looking update (within the honest spread), so Multi-Krum selects it; its share of
    # the m = 5 selected updates is then 1e6 / (1e6 + 200) reported and 200 / (200 + 200) = 1/2 capped
    for weighting, expected in (("reported", 1e6 / (1e6 + 200)), ("capped", 0.5)):
        _, decisions = round_with_liar(MultiKrum(device="cpu", num_malicious=1, num_selected=5, weighting=weighting),
                                       liar_shift=0.0)
        assert decisions[LIAR].weight == pytest.approx(expected, rel=1e-6)


def test_rules_that_ignore_counts_say_so():
    assert FedAvg.uses_counts and MultiKrum.uses_counts and GeometricMedian.uses_counts and NormClipping.uses_counts
    assert not Krum.uses_counts and not Median.uses_counts
    t_median, _ = round_with_liar(Median(device="cpu", weighting="reported"), liar_shift=1.0)
    assert abs(t_median) < 0.2  # the claim changes nothing for the median


def test_capping_leaves_honest_non_iid_counts_alone():
    claims = torch.tensor([20.0, 50.0, 80.0, 150.0, 60.0])  # lower median 60 -> cap 240: nothing is capped
    torch.testing.assert_close(counted_examples(claims, weighting="capped", weight_cap=4.0), claims)
    torch.testing.assert_close(counted_examples(claims, weighting="capped", weight_cap=2.0),
                               torch.tensor([20.0, 50.0, 80.0, 120.0, 60.0]))


def test_policy_errors_name_the_config_key():
    with pytest.raises(StrategyConfigError, match="defense.weighting='trusting'"):
        FedAvg(weighting="trusting")
    with pytest.raises(StrategyConfigError, match="defense.weight_cap"):
        FedAvg(weight_cap=0.5)


def test_count_lie_attack_reports_its_claim_and_scales():
    attack = CountLie(CountLieParams(claimed=1e6, scale=-2.0))
    assert attack.report_examples(37) == 1e6
    update = torch.tensor([1.0, -0.5])
    torch.testing.assert_close(attack.poison_update(update, ctx=None), torch.tensor([-2.0, 1.0]))
    assert CountLie().params.claimed == 1e6 and CountLie().poison_update(update, ctx=None) is update
    with pytest.raises(ValueError, match="claimed"):
        CountLieParams(claimed=0)
