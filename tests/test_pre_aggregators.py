"""Pre-aggregators (``defense.pre``): NNM, Bucketing and ARC kernels, their composition with the rules, the weights
mapped back to clients, the config checks, and agreement with ByzFL's implementations."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_messages import arrays_of, reply, started
from tensor_params import DEVICES, DTYPES, t

from fedsec.config import ConfigError, experiment_from_dict
from fedsec.strategies import (
    ARC,
    NNM,
    PRE_AGGREGATORS,
    Bucketing,
    ClientDecision,
    FedAvg,
    FoolsGold,
    Krum,
    Median,
    MultiKrum,
    NormClipping,
    StrategyConfigError,
    StrategyContext,
    plan_pre_aggregators,
)
from fedsec.strategies.pre import (
    adaptive_robust_clip,
    apply_pre_aggregators,
    arc_clipped_count,
    bucket_means,
    bucket_permutation,
    nearest_neighbor_mixing,
    resolved_pre,
)

# NNM's case: four clustered clients on the x axis and one outlier; n = 5, f = 1, so each row is the mean of its 4
# nearest. Clients 0-3 are each other's nearest (largest in-cluster distance 7 < 16.4 = |x4 - x3|): their rows
# are (0+1+3+7)/4 = 2.75; x4's nearest are x3, x2, x1 (16.4, 19.7, 21.5 < 22.4 to x0): ((20+7+3+1)/4, 10/4).
NNM_X = [[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0], [20.0, 10.0]]
NNM_ROWS = [[2.75, 0.0]] * 4 + [[7.75, 2.5]]

# ARC's case: norms 5, 2, 10, sqrt(2), 3 (no ties).
ARC_X = [[3.0, 4.0], [0.0, 2.0], [6.0, 8.0], [1.0, 1.0], [0.0, -3.0]]

# Bucketing's case: five clients, s = 2, the permutation (4, 2, 0, 3, 1): buckets {4, 2}, {0, 3}, {1}.
BUCKET_X = [[1.0, 2.0], [3.0, 0.0], [0.0, 4.0], [5.0, 6.0], [2.0, 2.0]]
BUCKET_PERMUTATION = [4, 2, 0, 3, 1]


def defense(**keys):
    """A validated ``[defense]`` section."""
    return experiment_from_dict({"defense": keys}).defense


# ------------------------------------------------------------------------------------------------ kernels (golden)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nnm_replaces_each_update_by_the_mean_of_its_n_minus_f_nearest(dtype, device):
    mixed, mixing = nearest_neighbor_mixing(t(NNM_X, dtype, device), num_malicious=1)
    torch.testing.assert_close(mixed, t(NNM_ROWS, dtype, device))
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[:4, :4] = 0.25
    expected[4, 1:] = 0.25  # the outlier mixes with x1, x2, x3 and itself, not with x0
    torch.testing.assert_close(mixing.cpu(), expected)
    # f = 0: every row becomes the plain mean (6.2, 2.0)
    torch.testing.assert_close(nearest_neighbor_mixing(t(NNM_X, dtype, device), num_malicious=0)[0],
                               t([[6.2, 2.0]] * 5, dtype, device))


def test_nnm_keeps_each_row_in_its_own_neighbourhood_even_among_duplicates():
    # rows 0-2 are identical: row 2's 2 nearest (n - f = 2) are all at distance 0; it must still take itself
    _, mixing = nearest_neighbor_mixing(t([[1.0, 1.0]] * 3 + [[9.0, 9.0], [8.0, 9.0]]), num_malicious=3 - 1)
    assert all(mixing[i, i] > 0 for i in range(5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_arc_clips_the_k_largest_to_the_next_norm(dtype, device):
    # f = 1: k = floor(2 * 1/5 * 4) = 1: only (6, 8) (norm 10) is clipped, to the next norm 5 -> (3, 4)
    clipped, scales = adaptive_robust_clip(t(ARC_X, dtype, device), num_malicious=1)
    torch.testing.assert_close(clipped, t([[3, 4], [0, 2], [3, 4], [1, 1], [0, -3]], dtype, device))
    torch.testing.assert_close(scales.cpu(), torch.tensor([1, 1, 0.5, 1, 1], dtype=torch.float64))
    # f = 2: k = floor(2 * 2/5 * 3) = 2: (6, 8) and (3, 4) are clipped to the third largest norm, 3
    clipped, _ = adaptive_robust_clip(t(ARC_X, dtype, device), num_malicious=2)
    torch.testing.assert_close(clipped, t([[1.8, 2.4], [0, 2], [1.8, 2.4], [1, 1], [0, -3]], dtype, device))
    # f = 0: nothing is clipped
    torch.testing.assert_close(adaptive_robust_clip(t(ARC_X, dtype, device), num_malicious=0)[0],
                               t(ARC_X, dtype, device))


def test_arc_count_is_the_papers_exact_floor():
    assert [arc_clipped_count(10, f) for f in range(5)] == [0, 1, 3, 4, 4]  # 2f(n-f)/n = 0, 1.8, 3.2, 4.2, 4.8
    # ByzFL computes int((2 * f / n) * (n - f)) in floating point: 56 here, where 2*33*209/242 is exactly 57
    assert arc_clipped_count(242, 33) == 57 and int((2 * 33 / 242) * (242 - 33)) == 56


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bucketing_averages_permuted_buckets_with_a_short_last_one(dtype, device):
    means, mixing = bucket_means(t(BUCKET_X, dtype, device), bucket_size=2,
                                 permutation=torch.tensor(BUCKET_PERMUTATION))
    # (x4 + x2)/2 = (1, 3); (x0 + x3)/2 = (3, 4); x1 alone = (3, 0)
    torch.testing.assert_close(means, t([[1, 3], [3, 4], [3, 0]], dtype, device))
    expected = torch.zeros(3, 5, dtype=torch.float64)
    expected[0, [4, 2]] = expected[1, [0, 3]] = 0.5
    expected[2, 1] = 1.0
    torch.testing.assert_close(mixing.cpu(), expected)


def test_bucketing_buckets_carry_their_members_counts_and_draw_a_seeded_permutation_per_round():
    step = Bucketing(bucket_size=2, seed=7)
    counts = t([10.0, 20.0, 30.0, 40.0, 50.0])
    out = step(t(BUCKET_X), counts, server_round=3)
    permutation = bucket_permutation(5, seed=7, server_round=3)
    assert sorted(permutation.tolist()) == [0, 1, 2, 3, 4]
    members = [permutation[:2].tolist(), permutation[2:4].tolist(), permutation[4:].tolist()]
    torch.testing.assert_close(out.num_examples, t([sum(counts[m].tolist()) for m in members]))
    # the same (seed, round) draws the same permutation in any process; other rounds draw others
    assert torch.equal(bucket_permutation(5, seed=7, server_round=3), permutation)
    draws = {tuple(bucket_permutation(5, seed=7, server_round=r).tolist()) for r in range(1, 11)}
    assert len(draws) > 5
    assert not torch.equal(bucket_permutation(8, seed=7, server_round=3, stream=1),
                           bucket_permutation(8, seed=7, server_round=3, stream=0))


@pytest.mark.parametrize("kernel", [lambda x: nearest_neighbor_mixing(x, num_malicious=2),
                                    lambda x: adaptive_robust_clip(x, num_malicious=2)], ids=["nnm", "arc"])
def test_nnm_and_arc_are_permutation_equivariant(kernel):
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * torch.arange(1, 8)[:, None]
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    torch.testing.assert_close(kernel(x[perm])[0], kernel(x)[0][perm])


# ------------------------------------------------------------------------------------------------ assumptions
@pytest.mark.parametrize("step, n, message", [
    (NNM(num_malicious=2), 4, r"num_malicious=2: NNM needs n > 2f, i.e. at least 2f\+1 = 5 updates, got n=4"),
    (ARC(num_malicious=3), 6, r"num_malicious=3: ARC needs n > 2f, i.e. at least 2f\+1 = 7 updates, got n=6"),
    (Bucketing(bucket_size=2, num_malicious=2), 8,
     r"bucket_size=2: Bucketing needs s\*f < n/2 .* 2\*s\*f = 8 >= 8; use bucket_size <= 1"),
])
def test_each_step_checks_its_papers_assumption_and_names_the_key(step, n, message):
    with pytest.raises(StrategyConfigError, match=message):
        step(torch.zeros(n, 2), torch.ones(n))
    assert step.min_inputs(1) == n + 1  # one more update is enough
    step(torch.zeros(n + 1, 2), torch.ones(n + 1))


def test_bucketing_needs_enough_inputs_for_the_rule_after_it():
    step = Bucketing(bucket_size=3, num_malicious=1)
    assert step.num_outputs(10) == 4 and step.min_inputs(4) == 10  # 3 full buckets and one of 1
    assert Bucketing(bucket_size=2, num_malicious=3).min_inputs(1) == 13  # 2sf < n


# ------------------------------------------------------------------------------------------------ composition
def context(*pre, clients_per_round=5, expected_malicious=1):
    return StrategyContext(expected_malicious=expected_malicious, clients_per_round=clients_per_round, pre=tuple(pre))


def test_nnm_then_median_differs_from_median_and_maps_weights_back_to_clients():
    x, ones = t(NNM_X, torch.float64), torch.ones(5, dtype=torch.float64)
    median = Median(device="cpu")
    aggregate, weights = median.aggregate_with_pre(x, ones)
    torch.testing.assert_close(aggregate, t([3.0, 0.0], torch.float64))  # the median of x alone
    nnm_median = Median(device="cpu", pre_aggregators=[NNM(num_malicious=1)])
    aggregate, weights = nnm_median.aggregate_with_pre(x, ones)
    # the median of NNM's rows (2.75 four times, 7.75) is 2.75; in both coordinates the middle rank is row 2 (stable
    # sort among the four equal rows), whose neighbourhood is clients 0-3: each gets 1/4, the outlier 0
    torch.testing.assert_close(aggregate, t([2.75, 0.0], torch.float64))
    torch.testing.assert_close(weights, t([0.25, 0.25, 0.25, 0.25, 0.0], torch.float64))
    assert nnm_median.pipeline().startswith("NNM(f=1; n >= 2f+1) -> Median")


def test_bucketing_then_median_gives_a_bucket_weight_to_its_members():
    step = Bucketing(bucket_size=2, num_malicious=1, seed=0)
    step.transform = lambda u, c, server_round: _fixed_buckets(u, c)  # the golden permutation
    aggregate, weights = Median(device="cpu", pre_aggregators=[step]).aggregate_with_pre(t(BUCKET_X), torch.ones(5))
    # median of (1, 3), (3, 4), (3, 0): x -> 3 (rank 1 of 1, 3, 3 is the bucket {0, 3}), y -> 3 (bucket {4, 2});
    # each bucket's 1/2 is split between its two members; client 1's bucket is never the median
    torch.testing.assert_close(aggregate, t([3.0, 3.0]))
    torch.testing.assert_close(weights, t([0.25, 0.0, 0.25, 0.25, 0.25]))


def _fixed_buckets(updates, counts):
    from fedsec.strategies.pre import PreOutput

    means, mixing = bucket_means(updates, bucket_size=2, permutation=torch.tensor(BUCKET_PERMUTATION))
    return PreOutput(means, (mixing > 0).to(counts.dtype) @ counts, mixing)


def test_arc_then_fedavg_weights_are_each_clients_coefficient():
    aggregate, weights = FedAvg(device="cpu", pre_aggregators=[ARC(num_malicious=1)]).aggregate_with_pre(
        t(ARC_X), torch.ones(5))
    # rows (3,4), (0,2), (3,4), (1,1), (0,-3) averaged: (1.4, 1.6); client 2 enters at 1/5 x its clip factor 1/2
    torch.testing.assert_close(aggregate, t([1.4, 1.6]))
    torch.testing.assert_close(weights, t([0.2, 0.2, 0.1, 0.2, 0.2]))


@pytest.mark.parametrize("rule", [lambda pre: FedAvg(device="cpu", pre_aggregators=pre),
                                  lambda pre: MultiKrum(num_malicious=1, num_selected=2, device="cpu",
                                                        pre_aggregators=pre),
                                  lambda pre: NormClipping(clip_norm=1.0, device="cpu", pre_aggregators=pre)],
                         ids=["fedavg", "multikrum", "norm_clipping"])
@pytest.mark.parametrize("pre", [[NNM(num_malicious=1)], [ARC(num_malicious=2)],
                                 [Bucketing(bucket_size=2, num_malicious=1, seed=3)],
                                 [Bucketing(bucket_size=2, num_malicious=1, seed=3), NNM(num_malicious=1),
                                  ARC(num_malicious=1)]], ids=["nnm", "arc", "bucketing", "all"])
def test_for_rules_that_sum_their_rows_the_client_weights_rebuild_the_aggregate(rule, pre):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 4, 9, dtype=torch.float64)[:, None]
    counts = torch.randint(5, 50, (9,), generator=gen).to(torch.float64)
    aggregate, weights = rule(pre).aggregate_with_pre(x, counts, server_round=2)
    assert weights.shape == (9,) and (weights >= 0).all()
    torch.testing.assert_close(aggregate, weights @ x)  # sum_i w_i x_i: the weight is the client's coefficient


def test_steps_run_in_the_listed_order():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    counts = torch.ones(10, dtype=torch.float64)
    bucketing, nnm = Bucketing(bucket_size=2, num_malicious=1, seed=5), NNM(num_malicious=1)
    first = bucketing(x, counts, server_round=1)
    manual = nnm(first.updates, first.num_examples, server_round=1)
    chained = apply_pre_aggregators([bucketing, nnm], x, counts, server_round=1)
    torch.testing.assert_close(chained.updates, manual.updates)
    torch.testing.assert_close(chained.mixing, manual.mixing @ first.mixing)
    torch.testing.assert_close(chained.mixing.to(x.dtype) @ x, chained.updates)
    other = apply_pre_aggregators([nnm, bucketing], x, counts, server_round=1)
    assert chained.updates.shape == other.updates.shape == (5, 3)
    assert not torch.allclose(chained.updates, other.updates)


def test_from_config_checks_that_the_rule_still_gets_enough_rows():
    from fedsec.registry import NoParams

    # Krum with f = 1 needs 2f+3 = 5 rows; bucketing 10 updates by 2 leaves 5: fine; by 3 leaves 4: refused
    ok = Krum.from_config(Krum.Params(num_malicious=1), context(Bucketing(bucket_size=2, num_malicious=1),
                                                                 clients_per_round=10))
    assert ok.required_updates() == 9 and isinstance(ok.pre_aggregators[0], Bucketing)
    # a default that depends on n is taken at the rows the rule gets: Multi-Krum's m = 5 buckets - f
    multikrum = MultiKrum.from_config(MultiKrum.Params(num_malicious=1),
                                      context(Bucketing(bucket_size=2, num_malicious=1), clients_per_round=10))
    assert multikrum.num_selected == 4
    with pytest.raises(StrategyConfigError, match=r"defense.pre=\['bucketing'\]: Bucketing\(s=3.* needs at least "
                                                  r"13 updates per round, got train.clients_per_round=10: the rule "
                                                  r"gets 4 rows after the pre-aggregators and needs 5"):
        Krum.from_config(Krum.Params(num_malicious=1), context(Bucketing(bucket_size=3, num_malicious=1),
                                                               clients_per_round=10))
    assert Median.from_config(NoParams(), context()).pre_aggregators == ()


def test_bucketing_is_refused_by_rules_that_follow_clients_across_rounds():
    with pytest.raises(StrategyConfigError, match=r"defense.pre=\['bucketing'\]: FoolsGold follows each client"):
        FoolsGold(device="cpu", pre_aggregators=[Bucketing()])
    assert FoolsGold(device="cpu", pre_aggregators=[NNM(num_malicious=1)]).pre_aggregators  # one row per client


# ------------------------------------------------------------------------------------------------ in a round
def global_zero():
    return arrays_of({"w": np.zeros(2)})


@pytest.mark.usefixtures("server_identity")
def test_round_records_per_client_weights_and_skips_when_a_step_lacks_updates():
    strategy = started(Median(device="cpu", pre_aggregators=[NNM(num_malicious=1)]), global_zero())
    replies = [reply(100 + i, i, {"w": np.array(row)}) for i, row in enumerate(NNM_X)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.75, 0.0])
    decisions = strategy.last_report.decisions
    assert [d.weight for d in decisions] == [0.25, 0.25, 0.25, 0.25, 0.0]
    assert [d.status for d in decisions] == ["accepted"] * 4 + ["rejected"]
    assert [d.update_norm for d in decisions][4] == pytest.approx(math.hypot(20, 10))  # of the raw update
    # NNM with f = 2 needs 5 updates; 4 arrive: the round is skipped and the reason names the step
    strategy = started(Median(device="cpu", pre_aggregators=[NNM(num_malicious=2)]), global_zero())
    arrays, _ = strategy.aggregate_train(1, replies[:4])
    assert arrays is None
    assert strategy.last_report.skipped_reason == ("4 valid updates, NNM(f=2; n >= 2f+1) -> Median(coordinate-wise) "
                                                   "needs at least 5")


# ------------------------------------------------------------------------------------------------ config
def test_plan_pre_aggregators_builds_the_listed_steps_with_the_rules_f():
    steps = plan_pre_aggregators(defense(strategy="median", pre=["nnm", {"name": "bucketing", "bucket_size": 3}]),
                                 20, 2, seed=9)
    assert [type(s) for s in steps] == [NNM, Bucketing]
    assert [s.num_malicious for s in steps] == [2, 2] and steps[1].bucket_size == 3
    assert (steps[1].seed, steps[1].stream) == (9, 1)
    # the rule's defense.num_malicious wins over the expected attackers; an entry's own key wins over both
    steps = plan_pre_aggregators(defense(strategy="krum", num_malicious=3, pre=["arc", {"name": "nnm",
                                                                                        "num_malicious": 1}]), 20, 2)
    assert [s.num_malicious for s in steps] == [3, 1]
    assert plan_pre_aggregators(defense(strategy="median"), 5, 1) == []
    assert sorted(PRE_AGGREGATORS.names()) == ["arc", "bucketing", "nnm"]


@pytest.mark.parametrize("pre, n, f, message", [
    (["mda"], 10, 1, r"defense.pre='mda': unknown pre-aggregator 'mda'; use one of arc, bucketing, nnm"),
    ([{"name": "bucketing", "bucket_sise": 3}], 10, 1, r"defense.pre\[0\].bucket_sise: unknown key for "
                                                      r"defense.pre\[0\]='bucketing'"),
    ([{"name": "bucketing", "bucket_size": 0}], 10, 1, r"defense.pre\[0\].bucket_size=0: Input should be greater"),
    ([{"bucket_size": 2}], 10, 1, r"defense.pre\[0\]=\{'bucket_size': 2\}: an entry is a name"),
    (["nnm"], 10, 5, r"defense.pre\[0\].num_malicious=5: NNM needs n > 2f, i.e. at least 2f\+1 = 11 updates, got "
                     r"n=10; use num_malicious <= 4 or more clients per round \(train.clients_per_round\)"),
    ([{"name": "bucketing", "bucket_size": 3}], 10, 2, r"defense.pre\[0\].bucket_size=3: Bucketing needs s\*f < "
                                                       r"n/2 .*; use bucket_size <= 2"),
    (["bucketing", {"name": "nnm", "num_malicious": 3}], 12, 2,
     r"defense.pre\[1\].num_malicious=3: NNM needs n > 2f.* got n=6.* \(6 rows after the steps before\)"),
])
def test_plan_pre_aggregators_errors_name_the_entry_and_key(pre, n, f, message):
    with pytest.raises(ConfigError, match=message):
        plan_pre_aggregators(defense(strategy="median", pre=pre), n, f)


def test_pre_aggregators_are_refused_where_the_server_aggregates_otherwise():
    with pytest.raises(ConfigError, match=r"defense.pre=\['nnm'\]: privacy.mode='central' aggregates with DP-FedAvg"):
        plan_pre_aggregators(defense(pre=["nnm"]), 10, 1, privacy_mode="central")
    with pytest.raises(ConfigError, match=r"encryption.scheme='ckks': the server sees only ciphertexts"):
        plan_pre_aggregators(defense(pre=["nnm"]), 10, 1, encryption="ckks")


def test_defense_pre_is_validated_as_a_short_list_and_resolves_with_its_defaults():
    with pytest.raises(ConfigError, match="defense.pre"):
        experiment_from_dict({"defense": {"pre": ["nnm"] * 5}})
    with pytest.raises(ConfigError, match="defense.pre"):
        experiment_from_dict({"defense": {"pre": "nnm"}})
    assert resolved_pre(defense(pre=["nnm", "bucketing"])) == {"pre": ["nnm", {"name": "bucketing",
                                                                               "bucket_size": 2}]}
    assert resolved_pre(defense()) == {}


# ------------------------------------------------------------------------------------------------ run plan
RUN = {"name": "pre", "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
       "model": {"name": "logreg"}, "train": {"clients_per_round": 4, "batch_size": 16, "lr": 0.1},
       "attack": {"kind": "gaussian", "client_ids": [2], "std": 10.0},
       "defense": {"strategy": "median", "pre": ["nnm"]}}


def test_the_run_plan_builds_the_rule_with_its_pre_aggregators_and_resolves_them():
    from fedsec.plan import plan_from_dict

    plan = plan_from_dict(RUN)
    strategy = plan.build_strategy(device="cpu")
    assert [type(s) for s in strategy.pre_aggregators] == [NNM]
    assert strategy.pre_aggregators[0].num_malicious == 1  # the attack's expected attackers per round
    assert plan.resolved["defense"]["pre"] == ["nnm"]
    assert plan_from_dict({**RUN, "defense": {"strategy": "median"}}).build_strategy(device="cpu").pre_aggregators == ()
    with pytest.raises(ConfigError, match=r"defense.pre\[0\].num_malicious=2: NNM needs n > 2f"):
        plan_from_dict({**RUN, "defense": {"strategy": "median", "pre": [{"name": "nnm", "num_malicious": 2}]}})


def test_an_attacker_that_knows_the_defense_simulates_its_pre_aggregators_too():
    from fedsec.plan import plan_from_dict

    plan = plan_from_dict(RUN)
    rule = plan.attack.defense.rule()
    updates = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    updates[0] += 5.0
    expected, _ = plan.build_strategy(device="cpu").aggregate_with_pre(updates, torch.ones(6))
    plain, _ = plan.build_strategy(device="cpu").aggregate_updates(updates, torch.ones(6))
    got, _ = rule(updates)
    assert torch.equal(got, expected) and not torch.equal(got, plain)


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.e2e
def test_nnm_then_median_runs_end_to_end_and_records_clients(tmp_path: Path):
    import tomllib

    import pandas as pd

    from fedsec.plan import plan_from_dict
    from fedsec.runtime.runner import run_experiment

    result = run_experiment(plan_from_dict(RUN), tmp_path / "run")
    assert result.summary["rounds_completed"] == 2
    assert tomllib.loads((result.run_dir / "config.toml").read_text())["defense"]["pre"] == ["nnm"]
    clients = pd.read_csv(result.run_dir / "clients.csv")
    assert len(clients) == 8
    attacker, honest = clients[clients["client"] == 2], clients[clients["client"] != 2]
    # the noisy update is in no honest client's 3 nearest, so the three honest rows are each the honest mean, and
    # the median takes them: the attacker gets 0, each honest client 1/3 (the median alone would not split evenly)
    assert (attacker["accepted"] == 0).all() and (attacker["malicious"] == 1).all()
    assert (honest["accepted"].round(6) == round(1 / 3, 6)).all()
    assert pd.read_csv(result.run_dir / "rounds.csv")["accuracy"].iloc[-1] > 0.8


# ------------------------------------------------------------------------------------------------ ByzFL
@pytest.fixture(scope="module")
def byzfl():
    """ByzFL's pre-aggregation module (skipped when byzfl is not installed).

    ByzFL 0.0.11's package ``__init__`` imports its benchmark, which needs torchvision; the pre-aggregators need only
    numpy, scipy and torch. Where torchvision is missing (or is a build that does not load next to this torch), the
    module is loaded without running the package ``__init__``, and ``sys.modules`` is restored after."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None:
        pytest.skip("byzfl is not installed (a test dependency: pip install byzfl)")
    saved = {k: v for k, v in sys.modules.items() if k == "byzfl" or k.startswith("byzfl.")}
    try:
        return importlib.import_module("byzfl.aggregators.preaggregators")
    except (ImportError, RuntimeError):
        for name in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
            del sys.modules[name]
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
        try:
            return importlib.import_module("byzfl.aggregators.preaggregators")
        finally:
            for name in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
                del sys.modules[name]
            sys.modules.update(saved)


CASES = [(5, 1), (7, 2), (7, 3), (10, 4), (11, 2), (16, 7)]


def random_updates(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)) * rng.uniform(0.2, 5.0, size=(n, 1)) + rng.normal(size=6)


@pytest.mark.parametrize("n, f", CASES)
def test_nnm_equals_byzfls(byzfl, n, f):
    for seed in range(5):
        x = random_updates(n, seed)
        expected = byzfl.NNM(f)(x.copy())
        mixed, _ = nearest_neighbor_mixing(torch.from_numpy(x), num_malicious=f)
        np.testing.assert_allclose(mixed.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n, f", CASES)
def test_arc_equals_byzfls(byzfl, n, f):
    for seed in range(5):
        x = random_updates(n, seed)
        expected = byzfl.ARC(f)(x.copy())  # ByzFL clips in place
        clipped, _ = adaptive_robust_clip(torch.from_numpy(x), num_malicious=f)
        np.testing.assert_allclose(clipped.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [5, 6, 7, 10])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_bucketing_with_byzfls_permutation_equals_byzfls(byzfl, n, s):
    x = random_updates(n, n * s)
    np.random.seed(n + s)  # ByzFL permutes with numpy's global generator: replay the same draw
    expected = byzfl.Bucketing(s)(x.copy())
    np.random.seed(n + s)
    permutation = np.random.permutation(n)
    means, _ = bucket_means(torch.from_numpy(x), bucket_size=s, permutation=torch.from_numpy(permutation))
    np.testing.assert_allclose(means.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n in ["fedavg", "krum", "multikrum", "bulyan", "median", "trimmed_mean",
                                                   "geomed", "norm_clipping", "centered_clipping", "flame", "foolsgold",
                                                   "dnc"]))
@pytest.mark.parametrize("pre", [["nnm"], ["arc"], ["bucketing"], ["bucketing", "nnm", "arc"]], ids="+".join)
def test_every_rule_composes_with_every_pre_aggregator(name, pre):
    from fedsec.strategies import STRATEGIES

    cls = STRATEGIES.get(name)
    steps = plan_pre_aggregators(defense(strategy=name, pre=pre), 23, 1)
    if name == "foolsgold" and "bucketing" in pre:
        with pytest.raises(StrategyConfigError, match="FoolsGold follows each client"):
            cls.from_config(cls.Params(), context(*steps, clients_per_round=23))
        return
    strategy = cls.from_config(cls.Params(), context(*steps, clients_per_round=23), device="cpu")
    strategy.current_clients = [ClientDecision(100 + i, i, 10, 1.0, 0.0, "pending") for i in range(23)]  # FoolsGold
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.5, 3, 23)[:, None]
    aggregate, weights = strategy.aggregate_with_pre(x, torch.full((23,), 10.0), server_round=1)
    assert aggregate.shape == (5,) and weights.shape == (23,) and bool(torch.isfinite(weights).all())
    assert (weights >= 0).all() and 0 < float(weights.sum()) <= 1 + 1e-5
