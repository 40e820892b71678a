"""FLTrust, FLAME, FoolsGold and DnC: hand-computed golden values, invariants, state across rounds, parameter
errors, and each class on real Flower messages."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
from flower_messages import arrays_of, reply, started
from flwr.app import ConfigRecord
from tensor_params import DEVICES, DTYPES, assert_permutation_equivariant, t

from fedsec.arrays import record_to_vector
from fedsec.strategies import StrategyConfigError
from fedsec.strategies.dnc import DnC, dnc_aggregate, dnc_outlier_scores, dnc_select
from fedsec.strategies.flame import FLAME, cosine_distances, flame_aggregate, flame_majority
from fedsec.strategies.fltrust import FLTrust, fltrust_aggregate, fltrust_trust_scores
from fedsec.strategies.foolsgold import FoolsGold, foolsgold_aggregate, foolsgold_weights

SHAPES = {"w": (2, 3), "b": (3,)}  # d = 9

# FoolsGold histories: honest h0, h1, h2 with cos(h0,h1) = .6, cos(h0,h2) = .3, cos(h1,h2) = .18+.08 = .26;
# sybils s3 = s4 on an axis no honest client uses (cos 1 with each other, 0 with the rest).
HISTORIES = [[1, 0, 0, 0, 0], [0.6, 0.8, 0, 0, 0], [0.3, 0.1, 0.9, 0.3, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
# v = max cs: .6, .6, .3, 1, 1; pardoning h2 (v .3 < .6): .3*.3/.6 = .15, .26*.3/.6 = .13 -> max .15;
# wv = 1 - max cs: .4, .4, .85, 0, 0; / .85 -> 8/17, 8/17, 1 -> .99, 0, 0;
# alpha = ln(wv / (1 - wv)) + .5: ln(8/9) + .5 = .3822, same, ln(99) + .5 > 1 -> 1, -inf -> 0, 0
ALPHA = [math.log(8 / 9) + 0.5, math.log(8 / 9) + 0.5, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------ golden values (kernels)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
class TestGolden:
    def test_fltrust(self, dtype, device):
        u = t([[1, 0], [0, 1], [3, 4], [-1, 0], [30, 40]], dtype, device)
        g0 = t([3, 4], dtype, device)  # ||g0|| = 5
        # cos with g0: .6, .8, 1, -.6 -> ReLU 0, 1; sum TS = 3.4
        torch.testing.assert_close(fltrust_trust_scores(u, g0), t([0.6, 0.8, 1, 0, 1], dtype, device))
        aggregate, weights = fltrust_aggregate(u, g0)
        # weight TS*5/||u||/3.4: 3/3.4, 4/3.4, 1/3.4, 0, .1/3.4 = (15, 20, 5, 0, .5)/17
        torch.testing.assert_close(weights, t([15 / 17, 20 / 17, 5 / 17, 0, 0.5 / 17], dtype, device))
        # x = (15*1 + 5*3 + .5*30)/17 = 45/17; y = (20*1 + 5*4 + .5*40)/17 = 60/17
        torch.testing.assert_close(aggregate, t([45 / 17, 60 / 17], dtype, device))

    def test_fltrust_all_against_the_server_update(self, dtype, device):
        aggregate, weights = fltrust_aggregate(t([[-1, 0], [0, -2], [-3, -4]], dtype, device), t([3, 4], dtype, device))
        torch.testing.assert_close(aggregate, t([0, 0], dtype, device))  # every TS is 0: the model stays
        torch.testing.assert_close(weights, t([0, 0, 0], dtype, device))

    def test_flame(self, dtype, device):
        # honest along (.6,.8) with norms 1,2,3,4; two outliers of norm 5 at 74 and 106 degrees from them
        u = t([[0.6, 0.8], [1.2, 1.6], [1.8, 2.4], [2.4, 3.2], [-4, 3], [4, -3]], dtype, device)
        assert flame_majority(u).tolist() == [True, True, True, True, False, False]  # cluster of >= 6//2+1 = 4
        aggregate, weights = flame_aggregate(u, noise_lambda=0.0)
        # norms 1,2,3,4,5,5 -> S_t = (3+4)/2 = 3.5; h3 clipped by 3.5/4; mean of 4: weights 1/4,1/4,1/4,3.5/16
        torch.testing.assert_close(weights, t([0.25, 0.25, 0.25, 0.21875, 0, 0], dtype, device))
        # (1+2+3+3.5)/4 = 2.375 along (.6,.8) -> (1.425, 1.9)
        torch.testing.assert_close(aggregate, t([1.425, 1.9], dtype, device))

    def test_flame_noise_has_std_lambda_times_median_norm(self, dtype, device):
        u = t([[0.6, 0.8], [1.2, 1.6], [1.8, 2.4], [2.4, 3.2], [-4, 3], [4, -3]], dtype, device)
        aggregate, _ = flame_aggregate(u, noise_lambda=0.01, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(2, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)
        torch.testing.assert_close(aggregate, t([1.425, 1.9], dtype, device) + 0.01 * 3.5 * noise)  # sigma = .035

    def test_foolsgold_weights(self, dtype, device):
        torch.testing.assert_close(foolsgold_weights(t(HISTORIES, dtype, device)), t(ALPHA, dtype, device))
        # kappa scales the logit before clipping: 2 * .3822 = .7644
        alpha2 = foolsgold_weights(t(HISTORIES, dtype, device), kappa=2.0)
        torch.testing.assert_close(alpha2, t([2 * ALPHA[0], 2 * ALPHA[0], 1, 0, 0], dtype, device))

    def test_foolsgold_aggregate(self, dtype, device):
        updates = t([[1, 0], [0, 1], [2, 2], [9, 9], [9, 9]], dtype, device)
        aggregate, weights = foolsgold_aggregate(updates, t(HISTORIES, dtype, device))
        a = ALPHA[0]  # weights alpha / (2a + 1); aggregate = (a*(1,0) + a*(0,1) + (2,2)) / (2a + 1)
        torch.testing.assert_close(weights, t([a / (2 * a + 1), a / (2 * a + 1), 1 / (2 * a + 1), 0, 0], dtype, device))
        torch.testing.assert_close(aggregate, t([(a + 2) / (2 * a + 1)] * 2, dtype, device))

    def test_dnc(self, dtype, device):
        u = t([[0, 1], [0, -1], [1, 0], [-1, 0], [10, 0]], dtype, device)
        # mean (2,0); centred (-2,1),(-2,-1),(-1,0),(-3,0),(8,0): x'x = diag(82, 2) -> v = (1,0); s = 4,4,1,9,64
        torch.testing.assert_close(dnc_outlier_scores(u), t([4, 4, 1, 9, 64], dtype, device))
        aggregate, weights = dnc_aggregate(u, num_malicious=1)  # drop the top 1*1 score: the outlier
        torch.testing.assert_close(aggregate, t([0, 0], dtype, device))
        torch.testing.assert_close(weights, t([0.25, 0.25, 0.25, 0.25, 0], dtype, device))
        aggregate, weights = dnc_aggregate(u, num_malicious=1, filter_frac=2.0)  # drop 64 and 9: keep h0,h1,h2
        torch.testing.assert_close(aggregate, t([1 / 3, 0], dtype, device))
        torch.testing.assert_close(weights, t([1 / 3, 1 / 3, 1 / 3, 0, 0], dtype, device))


# ------------------------------------------------------------------ invariants
def honest_and_backdoor(device="cpu", d=6):
    """Five diverse honest updates around (1,...,1), two near-identical ones pointing away (a backdoor)."""
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.3 * torch.randn(5, d, generator=g, dtype=torch.float64)
    direction = torch.tensor([(-1.0) ** i * 2 - 0.5 for i in range(d)], dtype=torch.float64)  # against (1,...,1)
    backdoor = torch.stack([direction, direction * 1.01 + 0.01])
    return torch.cat([honest, backdoor]).to(device)


def kernels():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    return {
        "fltrust": lambda u: fltrust_aggregate(u, torch.ones(u.shape[1], dtype=u.dtype, device=u.device)),
        "flame": lambda u: flame_aggregate(u, noise_lambda=0.001, generator=gen()),
        "foolsgold": lambda u: foolsgold_aggregate(u, u),
        "dnc": lambda u: dnc_aggregate(u, num_malicious=2, subsample_dim=4, generator=gen()),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(kernels()))
def test_permuting_clients_permutes_weights_and_keeps_aggregate(name, device):
    assert_permutation_equivariant(kernels()[name], honest_and_backdoor(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(kernels()))
def test_backdoor_pair_is_rejected_and_honest_clients_count(name, device):
    updates = honest_and_backdoor(device)
    aggregate, weights = kernels()[name](updates)
    assert weights[5] == 0 and weights[6] == 0
    assert int((weights[:5] > 0).sum()) >= 3  # a majority of the honest clients is kept
    assert torch.linalg.vector_norm(aggregate - updates[:5].mean(0)) < 0.6
    # the fear: the mean is dragged towards the backdoor direction
    assert torch.linalg.vector_norm(updates.mean(0) - updates[:5].mean(0)) > 1.0


def test_fltrust_rescales_a_huge_update_to_the_server_norm():
    u = t([[1, 1], [1000, 1000]], torch.float64)
    aggregate, weights = fltrust_aggregate(u, t([1, 1], torch.float64))
    # both TS = 1, both rescaled to ||g0|| = sqrt 2: the aggregate is g0 itself, not ~(500, 500)
    torch.testing.assert_close(aggregate, t([1, 1], torch.float64))
    torch.testing.assert_close(weights, t([0.5, 0.0005], torch.float64))


def test_cosine_distances_are_a_valid_precomputed_metric():
    distances = cosine_distances(t([[1, 0], [0, 2], [-3, 0], [0, 0]], torch.float64))
    # orthogonal 1, opposite 2, the zero update at distance 1 from everything
    expected = t([[0, 1, 2, 1], [1, 0, 1, 1], [2, 1, 0, 1], [1, 1, 1, 0]], torch.float64)
    torch.testing.assert_close(distances, expected)


def test_dnc_removes_a_planted_outlier_in_high_dimension():
    g = torch.Generator().manual_seed(1)
    updates = 0.1 * torch.randn(10, 5000, generator=g)
    updates[7] += 0.3  # along (1,...,1): 0.3 * sqrt(500) = 6.7 per subset, the noise's top direction ~2.6
    good = dnc_select(updates, num_malicious=1, subsample_dim=500, generator=torch.Generator().manual_seed(0))
    assert good.tolist() == [True] * 7 + [False] + [True] * 2


def test_dnc_subsets_are_seeded():
    updates = honest_and_backdoor(d=50)
    run = lambda seed: dnc_select(  # noqa: E731
        updates, num_malicious=3, iterations=3, subsample_dim=5, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(run(4), run(4))
    assert not run(4)[5:].any()


# ------------------------------------------------------------------ state across rounds
def test_foolsgold_remembers_sybils_across_rounds():
    strategy = FoolsGold(device="cpu")
    g = torch.Generator().manual_seed(2)

    def honest():  # three clients on their own axes, with noise
        return torch.eye(3, 8, dtype=torch.float64) + 0.05 * torch.randn(3, 8, generator=g, dtype=torch.float64)

    sybil = torch.zeros(8, dtype=torch.float64)
    sybil[5:] = 1.0
    keys = ["h0", "h1", "h2", "s3", "s4"]
    round1 = torch.cat([honest(), torch.stack([sybil, sybil + 1e-3])])
    _, weights1 = strategy.aggregate_with_keys(round1, keys)
    assert weights1[3] == 0 and weights1[4] == 0 and bool((weights1[:3] > 0).all())
    # round 2: the sybils send small, mutually different updates; alone they would look honest
    round2 = torch.cat([honest(), torch.zeros(2, 8, dtype=torch.float64)])
    round2[3, 3], round2[4, 4] = 0.1, 0.1  # orthogonal to each other and to everyone else this round
    _, fresh = foolsgold_aggregate(round2, round2)
    assert bool((fresh[3:] > 0).all())  # without history FoolsGold would accept them
    _, weights2 = strategy.aggregate_with_keys(round2, keys)
    torch.testing.assert_close(strategy.histories["s3"], round1[3] + round2[3])
    assert weights2[3] == 0 and weights2[4] == 0 and bool((weights2[:3] > 0).all())


def test_flame_noise_stream_continues_across_rounds():
    u = honest_and_backdoor()
    a, b = FLAME(noise_lambda=0.1, seed=1, device="cpu"), FLAME(noise_lambda=0.1, seed=1, device="cpu")
    first = a.aggregate_updates(u, torch.ones(7))[0]
    torch.testing.assert_close(b.aggregate_updates(u, torch.ones(7))[0], first)  # same seed, same noise
    assert not torch.equal(a.aggregate_updates(u, torch.ones(7))[0], first)  # the stream moved on


# ------------------------------------------------------------------ parameter errors and minimum n
@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FLTrust, {"root_size": 0}, "root_size=0: FLTrust needs root_size >= 1"),
        (FLTrust, {"root_size": 1.5}, "root_size=1.5: FLTrust needs an integer root_size >= 1"),
        (FLAME, {"noise_lambda": -0.001}, "noise_lambda=-0.001: FLAME needs 0.0 <= noise_lambda"),
        (FLAME, {"seed": -1}, "seed=-1: FLAME needs seed >= 0"),
        (FoolsGold, {"kappa": 0}, "kappa=0: FoolsGold needs 0.0 < kappa"),
        (FoolsGold, {"kappa": math.nan}, "kappa=nan: FoolsGold needs 0.0 < kappa"),
        (DnC, {"num_malicious": -1}, "num_malicious=-1: DnC needs num_malicious >= 0"),
        (DnC, {"iterations": 0}, "iterations=0: DnC needs iterations >= 1"),
        (DnC, {"subsample_dim": True}, "subsample_dim=True: DnC needs an integer subsample_dim >= 1"),
        (DnC, {"filter_frac": 0.0}, "filter_frac=0.0: DnC needs 0.0 < filter_frac"),
    ],
)
def test_bad_constructor_parameters_name_the_key(cls, kwargs, message):
    args = (lambda arrays: torch.zeros(9),) if cls is FLTrust else ()
    with pytest.raises(StrategyConfigError, match=f"^{re.escape(message)}$"):
        cls(*args, device="cpu", **kwargs)


def test_minimum_updates():
    assert DnC(num_malicious=2).min_valid_updates == 3
    assert DnC(num_malicious=2, filter_frac=1.5).min_valid_updates == 4  # floor(3) + 1
    assert FLAME().min_valid_updates == 2 and FoolsGold().min_valid_updates == 1
    with pytest.raises(StrategyConfigError, match=r"^DnC needs n >= floor\(c\*f\)\+1 = 3 valid updates, got 2$"):
        dnc_select(torch.zeros(2, 3), num_malicious=2)
    with pytest.raises(TypeError, match="server_update_fn must be callable"):
        FLTrust(None)


def test_describe_names_the_parameters():
    assert FLTrust(lambda a: torch.zeros(1)).describe() == "FLTrust(root_size=100)"
    assert FLAME().describe() == "FLAME(noise_lambda=0.001, seed=0; n >= 2)"
    assert FoolsGold(kappa=2).describe() == "FoolsGold(kappa=2)"
    assert DnC(num_malicious=1).describe() == (
        "DnC(num_malicious=1, iterations=5, subsample_dim=10000, filter_frac=1, seed=0; n >= floor(c*f)+1 = 2)"
    )


# ------------------------------------------------------------------ strategies on real Flower messages
def flower_round(n: int, *, backdoor: int = 2, seed: int = 0):
    """Global arrays and replies: n - backdoor honest clients near global + 1, the rest near global - 2 (same)."""
    rng = np.random.default_rng(seed)
    global_values = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    clients = []
    for i in range(n):
        shift = -2.0 if i >= n - backdoor else 1.0
        noise = 0.01 if i >= n - backdoor else 0.3
        clients.append({k: v + shift + noise * rng.normal(size=v.shape) for k, v in global_values.items()})
    replies = [reply(100 + i, i, v, 10 + i) for i, v in enumerate(clients)]
    return arrays_of(global_values), replies


def statuses(strategy):
    return [d.status for d in strategy.last_report.decisions]


@pytest.mark.usefixtures("server_identity")
def test_fltrust_on_flower_messages():
    global_arrays, replies = flower_round(6)
    calls = []

    def server_update(arrays):
        calls.append(arrays)
        return torch.ones(9)  # the root dataset says: move every parameter up

    strategy = started(FLTrust(server_update, device="cpu"), global_arrays)
    new_arrays, metrics = strategy.aggregate_train(1, reversed(replies))
    assert len(calls) == 1 and calls[0] is global_arrays
    assert statuses(strategy) == ["accepted"] * 4 + ["rejected"] * 2  # the -2 updates point against g0
    step = record_to_vector(new_arrays) - record_to_vector(global_arrays)
    assert torch.linalg.vector_norm(step) <= 3.0 + 1e-4  # a mix of rescaled updates: at most ||g0|| = 3
    assert float(step.min()) > 0 and metrics["num-examples"] == 10 + 11 + 12 + 13


@pytest.mark.usefixtures("server_identity")
def test_fltrust_refuses_a_server_update_of_the_wrong_size():
    global_arrays, replies = flower_round(4)
    strategy = started(FLTrust(lambda arrays: torch.ones(8), device="cpu"), global_arrays)
    with pytest.raises(ValueError, match="server_update_fn returned 8 values, the model has 9"):
        strategy.aggregate_train(1, replies)


@pytest.mark.usefixtures("server_identity")
def test_flame_on_flower_messages():
    global_arrays, replies = flower_round(7)
    strategy = started(FLAME(device="cpu"), global_arrays)
    new_arrays, _ = strategy.aggregate_train(1, replies)
    assert statuses(strategy)[-2:] == ["rejected", "rejected"]
    assert statuses(strategy).count("accepted") >= 4
    step = record_to_vector(new_arrays) - record_to_vector(global_arrays)
    assert float(step.mean()) > 0.5  # moved with the honest +1, not towards -2
    strategy = started(FLAME(device="cpu"), global_arrays)
    assert strategy.aggregate_train(1, replies[:1]) == (None, None)  # one update: round skipped
    assert (
        strategy.last_report.skipped_reason
        == "1 valid updates, FLAME(noise_lambda=0.001, seed=0; n >= 2) needs at least 2"
    )


@pytest.mark.usefixtures("server_identity")
def test_foolsgold_on_flower_messages_keys_histories_by_partition_id():
    global_arrays, replies = flower_round(6)
    strategy = started(FoolsGold(device="cpu"), global_arrays)
    new_arrays, _ = strategy.aggregate_train(1, list(reversed(replies)))
    assert statuses(strategy)[-2:] == ["rejected", "rejected"]  # near-identical pair: sybils
    assert set(strategy.histories) == {("partition", i) for i in range(6)}
    expected = record_to_vector(replies[4].content["arrays"]) - record_to_vector(global_arrays)
    torch.testing.assert_close(strategy.histories[("partition", 4)], expected)
    # round 2 from the new model, with only four clients: histories add up per partition id
    list(strategy.configure_train(2, new_arrays, ConfigRecord(), grid=None))
    _, replies2 = flower_round(6, seed=1)
    strategy.aggregate_train(2, replies2[2:])
    assert [d.partition_id for d in strategy.last_report.decisions] == [2, 3, 4, 5]
    assert statuses(strategy) == ["accepted", "accepted", "rejected", "rejected"]
    second = record_to_vector(replies2[4].content["arrays"]) - record_to_vector(new_arrays)
    torch.testing.assert_close(strategy.histories[("partition", 4)], expected + second)


@pytest.mark.usefixtures("server_identity")
def test_dnc_on_flower_messages():
    global_arrays, replies = flower_round(7, backdoor=1)
    strategy = started(DnC(num_malicious=1, device="cpu"), global_arrays)
    strategy.aggregate_train(1, replies)
    assert statuses(strategy) == ["accepted"] * 6 + ["rejected"]
    assert strategy.last_report.decisions[0].weight == pytest.approx(1 / 6)


# ------------------------------------------------------------------ chunked row geometry (strategies._linalg)
@pytest.mark.parametrize("chunk_bytes", [256, 4 << 20])  # many chunks (1 KiB each, the last one narrower), or one
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_row_geometry_equals_the_direct_expressions(dtype, chunk_bytes, monkeypatch):
    from fedsec.strategies._linalg import distances_to, gram_matrix, weighted_differences

    monkeypatch.setattr("fedsec.strategies._linalg.CPU_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr("fedsec.strategies._linalg.MIN_THREAD_WORK", 1)  # split even this small input
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(6, 1001, generator=g, dtype=dtype) + 5.0
    point, weights = torch.randn(1001, generator=g, dtype=dtype), torch.rand(6, generator=g, dtype=dtype)
    exact = updates.double()
    close = functools.partial(torch.testing.assert_close, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    close(gram_matrix(updates), exact @ exact.T)  # products in float32 for float32 rows, summed in float64
    close(gram_matrix(list(updates)), exact @ exact.T)  # rows given one by one
    shifted = exact - exact[2]
    close(gram_matrix(updates, shift_row=2), shifted @ shifted.T)
    close(gram_matrix(list(updates), shift_row=2), shifted @ shifted.T)
    assert gram_matrix(updates.float(), compute_dtype=torch.float64).dtype == torch.float64
    torch.testing.assert_close(distances_to(updates, point), torch.linalg.vector_norm(updates - point, dim=1))
    torch.testing.assert_close(weighted_differences(updates, point, weights), weights @ (updates - point))
    assert gram_matrix(torch.empty(0, 5)).shape == (0, 0)


def test_cosine_distances_equal_the_normalised_product():
    g = torch.Generator().manual_seed(2)
    updates = torch.randn(9, 5000, generator=g) + torch.randn(5000, generator=g)
    updates[3] = 0.0
    unit = updates.double() / torch.linalg.vector_norm(updates.double(), dim=1, keepdim=True).clamp_min(1e-300)
    expected = (1.0 - unit @ unit.T).clamp(0.0, 2.0).fill_diagonal_(0.0)
    expected[3, :] = expected[:, 3] = 1.0
    expected[3, 3] = 0.0
    torch.testing.assert_close(cosine_distances(updates.double()), expected)
    torch.testing.assert_close(cosine_distances(updates), expected.float())


def test_foolsgold_takes_histories_as_rows_or_as_a_matrix():
    histories = t(HISTORIES, torch.float64)
    updates = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(foolsgold_weights(list(histories)), foolsgold_weights(histories))
    for a, b in zip(foolsgold_aggregate(updates, list(histories)), foolsgold_aggregate(updates, histories),
                    strict=True):
        torch.testing.assert_close(a, b)
