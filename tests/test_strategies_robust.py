"""Robust strategies: hand-computed golden values, invariants, n-vs-f checks, parameter errors, Flower agreement."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from flower_messages import arrays_of, reply, started
from flwr.serverapp.strategy import Bulyan as FlowerBulyan
from flwr.serverapp.strategy import FedMedian as FlowerFedMedian
from flwr.serverapp.strategy import FedTrimmedAvg as FlowerFedTrimmedAvg
from flwr.serverapp.strategy import Krum as FlowerKrum
from flwr.serverapp.strategy import MultiKrum as FlowerMultiKrum
from tensor_params import DEVICES, DTYPES, assert_permutation_equivariant, t

from fedsec.strategies import StrategyConfigError
from fedsec.strategies._checks import require_clients
from fedsec.strategies.bulyan import Bulyan, bulyan_aggregate
from fedsec.strategies.centered_clipping import CenteredClipping, centered_clip
from fedsec.strategies.geometric_median import GeometricMedian, geometric_median
from fedsec.strategies.krum import Krum
from fedsec.strategies.median import Median, coordinate_median
from fedsec.strategies.multikrum import MultiKrum, krum_scores, multikrum_aggregate, multikrum_select
from fedsec.strategies.norm_clipping import NormClipping, norm_clip
from fedsec.strategies.trimmed_mean import TrimmedMean, trimmed_mean

SHAPES = {"w": (2, 3), "b": (3,)}

# Seven clients in 2-D: five honest h0..h4, two outliers o5, o6. Coordinates are distinct within each column.
SEVEN = [[0, 3], [1, 7], [2, 2], [6, 4], [7, 12], [30, -30], [-24, 35]]
SEVEN_EXAMPLES = [10, 20, 30, 40, 10, 50, 60]
# Squared distances of the honest ones: h0-h1 17, h0-h2 5, h0-h3 37, h0-h4 130, h1-h2 26, h1-h3 34, h1-h4 61,
# h2-h3 20, h2-h4 125, h3-h4 65; every distance to an outlier is > 1400 (o5-h3 1732 is the smallest).
# Krum scores with f=1 (n-f-2 = 4 nearest): h0 5+17+37+130 = 189, h1 17+26+34+61 = 138, h2 5+20+26+125 = 176,
# h3 20+34+37+65 = 156, h4 61+65+125+130 = 381, o5 1732+1808+1989+2210 = 7739, o6 1409+1490+1600+1765 = 6264.
SEVEN_SCORES_F1 = [189.0, 138.0, 176.0, 156.0, 381.0, 7739.0, 6264.0]


# ------------------------------------------------------------------ golden values (kernels)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
class TestGolden:
    def test_krum_scores_and_selection(self, dtype, device):
        u = t(SEVEN, dtype, device)
        torch.testing.assert_close(krum_scores(u, num_malicious=1), t(SEVEN_SCORES_F1, dtype, device))
        # f=1: ascending scores h1 138 < h3 156 < h2 176 < h0 189 < h4 381 < o6 6264 < o5 7739
        assert multikrum_select(u, num_malicious=1, num_selected=3).tolist() == [1, 3, 2]
        # f=2 (3 nearest): h0 5+17+37 = 59, h1 17+26+34 = 77, h2 5+20+26 = 51, h3 91, h4 251 -> h2 wins
        assert multikrum_select(u, num_malicious=2, num_selected=1).tolist() == [2]

    def test_krum_and_multikrum(self, dtype, device):
        u, n = t(SEVEN, dtype, device), t(SEVEN_EXAMPLES, dtype, device)
        aggregate, weights = multikrum_aggregate(u, n, num_malicious=1, num_selected=1)
        torch.testing.assert_close(aggregate, t([1, 7], dtype, device))  # Krum: h1 alone
        torch.testing.assert_close(weights, t([0, 1, 0, 0, 0, 0, 0], dtype, device))
        aggregate, weights = multikrum_aggregate(u, n, num_malicious=1, num_selected=3)
        # h1 (20 ex.), h3 (40), h2 (30): (20*(1,7) + 40*(6,4) + 30*(2,2)) / 90 = (320/90, 360/90)
        torch.testing.assert_close(aggregate, t([32 / 9, 4], dtype, device))
        torch.testing.assert_close(weights, t([0, 2 / 9, 3 / 9, 4 / 9, 0, 0, 0], dtype, device))

    def test_bulyan(self, dtype, device):
        aggregate, weights = bulyan_aggregate(t(SEVEN, dtype, device), num_malicious=1)
        # theta = 7-2 = 5 kept: h0..h4 (lowest scores); beta = 5-2 = 3 nearest the median per coordinate:
        # x 0,1,2,6,7 -> median 2, nearest {2,1,0} -> 1; y 3,7,2,4,12 -> median 4, nearest {4,3,2} -> 3
        torch.testing.assert_close(aggregate, t([1, 3], dtype, device))
        # x used by h0,h1,h2; y by h0,h2,h3; each use is 1/3 in one of 2 coordinates
        torch.testing.assert_close(weights, t([1 / 3, 1 / 6, 1 / 3, 1 / 6, 0, 0, 0], dtype, device))

    def test_bulyan_with_injected_selection(self, dtype, device):
        def last(updates, *, num_malicious, num_selected):
            return torch.arange(updates.shape[0] - num_selected, updates.shape[0], device=updates.device)

        aggregate, weights = bulyan_aggregate(t(SEVEN, dtype, device), num_malicious=1, select=last)
        # kept h2,h3,h4,o5,o6: x 2,6,7,30,-24 -> median 6, nearest {6,7,2} -> 5; y 2,4,12,-30,35 -> median 4,
        # nearest {4,2,12} -> 6
        torch.testing.assert_close(aggregate, t([5, 6], dtype, device))
        torch.testing.assert_close(weights, t([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0], dtype, device))

    def test_median(self, dtype, device):
        aggregate, weights = coordinate_median(t(SEVEN, dtype, device))
        # x sorted -24,0,1,2,6,7,30 -> 2 (h2); y sorted -30,2,3,4,7,12,35 -> 4 (h3)
        torch.testing.assert_close(aggregate, t([2, 4], dtype, device))
        torch.testing.assert_close(weights, t([0, 0, 0.5, 0.5, 0, 0, 0], dtype, device))
        aggregate, weights = coordinate_median(t(SEVEN[:6], dtype, device))
        # even n: x 0,1,2,6,7,30 -> (2+6)/2 = 4; y -30,2,3,4,7,12 -> (3+4)/2 = 3.5; halves to h2,h3 (x) and h0,h3 (y)
        torch.testing.assert_close(aggregate, t([4, 3.5], dtype, device))
        torch.testing.assert_close(weights, t([0.25, 0, 0.25, 0.5, 0, 0], dtype, device))

    def test_trimmed_mean(self, dtype, device):
        u = t(SEVEN, dtype, device)
        aggregate, weights = trimmed_mean(u, num_trimmed=1)
        # drop one each end: x (0+1+2+6+7)/5 = 3.2; y (2+3+4+7+12)/5 = 5.6; outliers dropped in both
        torch.testing.assert_close(aggregate, t([3.2, 5.6], dtype, device))
        torch.testing.assert_close(weights, t([0.2, 0.2, 0.2, 0.2, 0.2, 0, 0], dtype, device))
        aggregate, weights = trimmed_mean(u, num_trimmed=2)
        # x {1,2,6} -> 3 (h1,h2,h3); y {3,4,7} -> 14/3 (h0,h3,h1)
        torch.testing.assert_close(aggregate, t([3, 14 / 3], dtype, device))
        torch.testing.assert_close(weights, t([1 / 6, 1 / 3, 1 / 6, 1 / 3, 0, 0, 0], dtype, device))

    def test_geometric_median_one_step(self, dtype, device):
        u = t([[-3, -4], [-4, -3], [0, -1], [1, 0], [6, 8]], dtype, device)
        aggregate, weights = geometric_median(u, t([1] * 5, dtype, device), iterations=1)
        # start at the mean (0,0); distances 5,5,1,1,10 -> beta 0.2,0.2,1,1,0.1 (sum 2.5) -> /2.5;
        # v = 0.08*(-3,-4) + 0.08*(-4,-3) + 0.4*(0,-1) + 0.4*(1,0) + 0.04*(6,8) = (0.08, -0.64)
        torch.testing.assert_close(weights, t([0.08, 0.08, 0.4, 0.4, 0.04], dtype, device))
        torch.testing.assert_close(aggregate, t([0.08, -0.64], dtype, device))

    def test_geometric_median_of_collinear_points_is_the_median_point(self, dtype, device):
        u = t([[0, 0], [1, 1], [2, 2], [3, 3], [100, 100]], dtype, device)
        aggregate, weights = geometric_median(u, t([1] * 5, dtype, device), iterations=50)
        # on a line the geometric median is the middle point (2,2); the mean would be (21.2, 21.2)
        torch.testing.assert_close(aggregate, t([2, 2], dtype, device), rtol=0, atol=1e-4)
        assert weights[2] > 0.999 and weights[4] < 1e-6

    def test_norm_clipping(self, dtype, device):
        u = t([[0.6, 0.8], [1.2, -0.5], [-0.8, 0.6], [6, 8]], dtype, device)
        aggregate, weights = norm_clip(u, t([2, 1, 1, 4], dtype, device), clip_norm=2.0)
        # norms 1, 1.3, 1, 10 -> scales 1,1,1,0.2; shares .25,.125,.125,.5 -> weights .25,.125,.125,.1
        # x = .25*.6 + .125*1.2 - .125*.8 + .1*6 = .8; y = .25*.8 - .125*.5 + .125*.6 + .1*8 = 1.0125
        torch.testing.assert_close(weights, t([0.25, 0.125, 0.125, 0.1], dtype, device))
        torch.testing.assert_close(aggregate, t([0.8, 1.0125], dtype, device))

    def test_centered_clipping(self, dtype, device):
        u = t([[0.6, 0.8], [1.2, -0.5], [-0.8, 0.6], [6, 8]], dtype, device)
        aggregate, weights = centered_clip(u, t([0, 0], dtype, device), clip_norm=2.0, iterations=1)
        # around 0, uniform: weights .25,.25,.25,.2/4; x = .25*(.6+1.2-.8) + .05*6 = .55; y = .25*.9 + .05*8 = .625
        torch.testing.assert_close(weights, t([0.25, 0.25, 0.25, 0.05], dtype, device))
        torch.testing.assert_close(aggregate, t([0.55, 0.625], dtype, device))
        c = t([1, 2], dtype, device)
        u = c + t([[3, 4], [0, 1], [-1, 0], [-6, 8]], dtype, device)
        aggregate, weights = centered_clip(u, c, clip_norm=2.0, iterations=1)
        # around (1,2): offsets of norm 5,1,1,10 -> scales .4,1,1,.2 -> /4;
        # v = (1,2) + .1*(3,4) + .25*(0,1) + .25*(-1,0) + .05*(-6,8) = (0.75, 3.05)
        torch.testing.assert_close(weights, t([0.1, 0.25, 0.25, 0.05], dtype, device))
        torch.testing.assert_close(aggregate, t([0.75, 3.05], dtype, device))
        two, _ = centered_clip(u, c, clip_norm=2.0, iterations=2)
        again, _ = centered_clip(u, aggregate, clip_norm=2.0, iterations=1)
        torch.testing.assert_close(two, again)  # L steps = L single steps, each re-centred


# ------------------------------------------------------------------ invariants
def kernels():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    return {
        "krum": lambda u, n: multikrum_aggregate(u, n, num_malicious=1, num_selected=1),
        "multikrum": lambda u, n: multikrum_aggregate(u, n, num_malicious=1, num_selected=4),
        "bulyan": lambda u, n: bulyan_aggregate(u, num_malicious=1),
        "median": lambda u, n: coordinate_median(u),
        "trimmed_mean": lambda u, n: trimmed_mean(u, num_trimmed=1),
        "geomed": lambda u, n: geometric_median(u, n, iterations=10),
        "norm_clipping": lambda u, n: norm_clip(u, n, clip_norm=2.5, noise_std=0.1, generator=gen()),
        "centered_clipping": lambda u, n: centered_clip(u, torch.zeros(u.shape[1], dtype=u.dtype, device=u.device),
                                                        clip_norm=2.5, iterations=3),
    }


def honest_and_outlier(device="cpu"):
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.1 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    updates = torch.cat([honest, torch.full((1, 4), 50.0, dtype=torch.float64)]).to(device)
    return updates, torch.arange(1.0, 8.0, dtype=torch.float64, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(kernels()))
def test_permuting_clients_permutes_weights_and_keeps_aggregate(name, device):
    assert_permutation_equivariant(kernels()[name], *honest_and_outlier(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(kernels()))
def test_outlier_is_rejected_or_bounded(name, device):
    updates, num_examples = honest_and_outlier(device)
    aggregate, weights = kernels()[name](updates, num_examples)
    honest = updates[:6]
    if name in {"krum", "multikrum", "bulyan", "median", "trimmed_mean"}:
        assert weights[6] == 0  # rejected / trimmed in every coordinate
        assert torch.linalg.vector_norm(aggregate - honest.mean(0)) < 0.3
    elif name == "geomed":
        assert weights[6] < 0.01 and torch.linalg.vector_norm(aggregate - honest.mean(0)) < 0.3
    else:  # clipping: weight = share * scale; honest (norm ~2 < tau) unclipped, the outlier scaled to ~tau/100
        share = num_examples / num_examples.sum() if name == "norm_clipping" else torch.full_like(weights, 1 / 7)
        scale = weights / share
        torch.testing.assert_close(scale[:6], torch.ones_like(scale[:6]))
        assert scale[6] < 0.05
        assert torch.linalg.vector_norm(aggregate - honest.mean(0)) < 1.0  # the mean is > 10 away
    if name == "norm_clipping":  # the outlier moves the aggregate by share * tau at most (plus noise, std 0.1)
        assert torch.linalg.vector_norm(aggregate - weights[:6] @ honest) <= 2.5 * share[6] + 0.5


def test_fedavg_would_be_dragged_by_the_outlier():  # the fear the tests above guard against
    updates, _ = honest_and_outlier()
    assert torch.linalg.vector_norm(updates.mean(0) - updates[:6].mean(0)) > 10


# ------------------------------------------------------------------ n-vs-f checks
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: krum_scores(torch.zeros(4, 2), num_malicious=1), "Krum needs n >= 2f+3 = 5 valid updates, got 4"),
        (lambda: multikrum_select(torch.zeros(5, 2), num_malicious=1, num_selected=6),
         "Multi-Krum needs n >= max(2f+3, m) = 6 valid updates, got 5"),
        (lambda: bulyan_aggregate(torch.zeros(10, 2), num_malicious=2),
         "Bulyan needs n >= 4f+3 = 11 valid updates, got 10"),
        (lambda: trimmed_mean(torch.zeros(4, 2), num_trimmed=2),
         "TrimmedMean needs n >= 2k+1 = 5 valid updates, got 4"),
        (lambda: require_clients("Bulyan", 10, 15, "n >= 4f+3", fix="use num_malicious <= 1"),
         "Bulyan needs n >= 4f+3 = 15 valid updates, got 10; use num_malicious <= 1"),
    ],
)
def test_kernels_refuse_too_few_updates(call, message):
    with pytest.raises(StrategyConfigError, match=f"^{re.escape(message)}$"):
        call()


def test_min_valid_updates_follow_f():
    assert Krum(num_malicious=2).min_valid_updates == 7
    assert MultiKrum(num_malicious=1, num_selected=6).min_valid_updates == 6
    assert MultiKrum(num_malicious=1, num_selected=2).min_valid_updates == 5
    assert Bulyan(num_malicious=2).min_valid_updates == 11
    assert Median().min_valid_updates == TrimmedMean().min_valid_updates == 1


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (MultiKrum, {"num_malicious": -1}, "num_malicious=-1: MultiKrum needs num_malicious >= 0"),
        (Krum, {"num_malicious": 1.5}, "num_malicious=1.5: Krum needs an integer num_malicious >= 0"),
        (MultiKrum, {"num_selected": 0}, "num_selected=0: MultiKrum needs num_selected >= 1"),
        (Bulyan, {"num_malicious": True}, "num_malicious=True: Bulyan needs an integer num_malicious >= 0"),
        (TrimmedMean, {"trim_ratio": 0.5}, "trim_ratio=0.5: TrimmedMean needs 0.0 <= trim_ratio < 0.5"),
        (TrimmedMean, {"trim_ratio": -0.1}, "trim_ratio=-0.1: TrimmedMean needs 0.0 <= trim_ratio < 0.5"),
        (GeometricMedian, {"iterations": 0}, "iterations=0: GeometricMedian needs iterations >= 1"),
        (GeometricMedian, {"smoothing": 0.0}, "smoothing=0.0: GeometricMedian needs 0.0 < smoothing"),
        (NormClipping, {"clip_norm": 0}, "clip_norm=0: NormClipping needs 0.0 < clip_norm"),
        (NormClipping, {"clip_norm": math.nan}, "clip_norm=nan: NormClipping needs 0.0 < clip_norm"),
        (NormClipping, {"noise_std": -1.0}, "noise_std=-1.0: NormClipping needs 0.0 <= noise_std"),
        (NormClipping, {"seed": "0"}, "seed='0': NormClipping needs an integer seed >= 0"),
        (CenteredClipping, {"clip_norm": math.inf}, "clip_norm=inf: CenteredClipping needs 0.0 < clip_norm"),
        (CenteredClipping, {"iterations": 0}, "iterations=0: CenteredClipping needs iterations >= 1"),
    ],
)
def test_bad_constructor_parameters_name_the_key(cls, kwargs, message):
    with pytest.raises(StrategyConfigError, match=f"^{re.escape(message)}$") as info:
        cls(device="cpu", **kwargs)
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------ strategies on real Flower messages
def random_round(seed: int, n: int):
    rng = np.random.default_rng(seed)
    global_values = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    clients = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(n)]
    clients[-1] = {k: v + 20.0 for k, v in clients[-1].items()}  # one outlier
    examples = [float(rng.integers(1, 50)) for _ in range(n)]
    # fresh messages per call: Flower's FedMedian/FedTrimmedAvg/Bulyan pop the arrays out of the replies
    make = lambda: [reply(100 + i, i, v, e) for i, (v, e) in enumerate(zip(clients, examples, strict=True))]  # noqa: E731
    return arrays_of(global_values), make


FLOWER_PAIRS = [
    ("krum", lambda: Krum(num_malicious=1, device="cpu"), lambda: FlowerKrum(num_malicious_nodes=1), 7),
    ("krum_f2", lambda: Krum(num_malicious=2, device="cpu"), lambda: FlowerKrum(num_malicious_nodes=2), 8),
    ("multikrum", lambda: MultiKrum(num_malicious=1, num_selected=4, device="cpu"),
     lambda: FlowerMultiKrum(num_malicious_nodes=1, num_nodes_to_select=4), 8),
    ("bulyan", lambda: Bulyan(num_malicious=1, device="cpu"), lambda: FlowerBulyan(num_malicious_nodes=1), 9),
    ("bulyan_f2", lambda: Bulyan(num_malicious=2, device="cpu"), lambda: FlowerBulyan(num_malicious_nodes=2), 12),
    ("median_odd", lambda: Median(device="cpu"), FlowerFedMedian, 7),
    ("median_even", lambda: Median(device="cpu"), FlowerFedMedian, 6),
    ("trimmed_mean", lambda: TrimmedMean(trim_ratio=0.2, device="cpu"), lambda: FlowerFedTrimmedAvg(beta=0.2), 10),
    ("trimmed_mean_03", lambda: TrimmedMean(trim_ratio=0.3, device="cpu"), lambda: FlowerFedTrimmedAvg(beta=0.3), 7),
]


@pytest.mark.usefixtures("server_identity")
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("name", "ours", "theirs", "n"), FLOWER_PAIRS, ids=[p[0] for p in FLOWER_PAIRS])
def test_agrees_with_flower(name, ours, theirs, n, seed, monkeypatch):
    # Flower's Bulyan calls ArrayRecord.to_numpy_ndarrays(keep_input=False), which runs gc.collect() per client;
    # skipping it keeps this file fast and changes no number.
    monkeypatch.setattr("gc.collect", lambda *args: 0)
    global_arrays, make = random_round(seed, n)
    strategy = started(ours(), global_arrays)
    mine, _ = strategy.aggregate_train(1, make())
    flower, _ = theirs().aggregate_train(1, make())
    for key in SHAPES:
        np.testing.assert_allclose(mine[key].numpy(), flower[key].numpy(), rtol=1e-5, atol=1e-5)
    assert strategy.last_report.decisions[-1].weight == 0  # the +20 outlier never counts


@pytest.mark.usefixtures("server_identity")
def test_too_small_round_is_skipped_and_recorded():
    global_arrays, make = random_round(0, 6)
    strategy = started(Bulyan(num_malicious=1, device="cpu"), global_arrays)
    arrays, metrics = strategy.aggregate_train(1, make())
    assert arrays is None and metrics is None
    assert strategy.last_report.skipped_reason == (
        "6 valid updates, Bulyan(num_malicious=1, select=multikrum_select; n >= 4f+3 = 7) needs at least 7"
    )


@pytest.mark.usefixtures("server_identity")
def test_krum_decisions_reject_all_but_one():
    global_arrays, make = random_round(1, 7)
    strategy = started(Krum(num_malicious=1, device="cpu"), global_arrays)
    strategy.aggregate_train(1, make())
    status = [d.status for d in strategy.last_report.decisions]
    assert status.count("accepted") == 1 and status[-1] == "rejected"


def test_norm_clipping_noise_is_seeded_and_device_independent():
    updates, examples = torch.zeros(3, 20_000, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    a, b, c = (NormClipping(clip_norm=1.0, noise_std=0.5, seed=s, device="cpu") for s in (7, 7, 8))
    first_a, second_a = a.aggregate_updates(updates, examples)[0], a.aggregate_updates(updates, examples)[0]
    torch.testing.assert_close(b.aggregate_updates(updates, examples)[0], first_a)  # same seed, same stream
    assert not torch.equal(first_a, second_a) and not torch.equal(c.aggregate_updates(updates, examples)[0], first_a)
    assert abs(float(first_a.std()) - 0.5) < 0.02 and abs(float(first_a.mean())) < 0.02
    if torch.cuda.is_available():
        on_gpu = NormClipping(clip_norm=1.0, noise_std=0.5, seed=7, device="cuda")
        torch.testing.assert_close(on_gpu.aggregate_updates(updates.cuda(), examples.cuda())[0].cpu(), first_a)


def test_centered_clipping_carries_its_center_between_rounds():
    strategy = CenteredClipping(clip_norm=2.0, device="cpu")
    first = t([[0.6, 0.8], [1.2, -0.5], [-0.8, 0.6], [6, 8]])
    aggregate, _ = strategy.aggregate_updates(first, torch.ones(4))
    torch.testing.assert_close(aggregate, t([0.55, 0.625]))  # round 1 clips around 0 (golden test above)
    torch.testing.assert_close(strategy.center, aggregate)
    second = first + 3.0
    aggregate2, _ = strategy.aggregate_updates(second, torch.ones(4))
    expected, _ = centered_clip(second, aggregate, clip_norm=2.0, iterations=1)
    torch.testing.assert_close(aggregate2, expected)
    from_zero, _ = centered_clip(second, torch.zeros(2), clip_norm=2.0, iterations=1)
    assert not torch.allclose(aggregate2, from_zero)  # the center really is the previous aggregate


def test_describe_names_the_parameters():
    assert Krum(num_malicious=1).describe() == "Krum(num_malicious=1; n >= 2f+3 = 5)"
    assert "trim_ratio=0.3" in TrimmedMean(trim_ratio=0.3).describe()
    assert NormClipping(clip_norm=2, noise_std=0.01, seed=3).describe() == (
        "NormClipping(clip_norm=2, noise_std=0.01, seed=3)"
    )
    assert CenteredClipping(clip_norm=5, iterations=2).describe() == "CenteredClipping(clip_norm=5, iterations=2)"
    assert GeometricMedian(iterations=4).describe() == "GeometricMedian(iterations=4, smoothing=1e-06)"


# ------------------------------------------------------------------ hand-written kernels vs torch.sort references
def reference_median(updates):
    """The sort-based median (the implementation before the sorting network): stable sort along dim 0."""
    n = updates.shape[0]
    values, order = torch.sort(updates, dim=0, stable=True)
    low, high = (n - 1) // 2, n // 2
    coefficients = torch.zeros(n, dtype=updates.dtype)
    coefficients[low] += 0.5
    coefficients[high] += 0.5
    return (values[low] + values[high]) / 2, reference_rank_weights(order, coefficients)


def reference_trimmed_mean(updates, k):
    n = updates.shape[0]
    values, order = torch.sort(updates, dim=0, stable=True)
    coefficients = torch.zeros(n, dtype=updates.dtype)
    coefficients[k : n - k] = 1.0 / (n - 2 * k)
    return values[k : n - k].mean(dim=0), reference_rank_weights(order, coefficients)


def reference_rank_weights(order, coefficients):
    """Mean over coordinates of the coefficient each client's rank got (the scatter over the full (n, d) order)."""
    scattered = torch.zeros(order.shape, dtype=coefficients.dtype)
    scattered.scatter_(0, order, coefficients[:, None].expand_as(scattered))
    return scattered.mean(dim=1)


def reference_bulyan(updates, f):
    """Bulyan by a loop over coordinates: stable ranks of the kept updates (in client order), then the run of beta
    ranks closest to the median, shrunk from both ends one value at a time (ties: the larger value goes)."""
    n, d = updates.shape
    theta, beta = n - 2 * f, n - 4 * f
    kept = sorted(multikrum_select(updates, num_malicious=f, num_selected=theta).tolist())
    aggregate = torch.empty(d, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.float64)
    for j in range(d):
        values, order = torch.sort(updates[kept, j], stable=True)
        median = (values[(theta - 1) // 2] + values[theta // 2]) / 2
        low, high = 0, theta
        while high - low > beta:
            if median - values[low] > values[high - 1] - median:
                low += 1
            else:
                high -= 1
        aggregate[j] = values[low:high].double().mean()
        for i in order[low:high].tolist():
            counts[kept[i]] += 1
    return aggregate, counts / (beta * d)


def random_updates(kind, n, d, dtype, g):
    if kind == "normal":
        return torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "few values":  # ties everywhere, also at the edges of the kept ranks
        return torch.randint(-2, 3, (n, d), generator=g).to(dtype)
    if kind == "frozen":  # all-equal columns (frozen parameters) next to binary ones
        updates = torch.zeros(n, d, dtype=dtype)
        updates[:, ::2] = torch.randint(0, 2, (n, (d + 1) // 2), generator=g).to(dtype)
        return updates
    if kind == "sparse":  # mostly zeros: ties at the median in (nearly) every column, no column constant
        return torch.randn(n, d, generator=g, dtype=dtype) * (torch.rand(n, d, generator=g) < 0.2)
    return torch.randn(n, d, generator=g, dtype=dtype).round(decimals=1)  # "rounded": occasional ties


KINDS = ["normal", "few values", "frozen", "sparse", "rounded"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 3, 6, 7, 16, 33, 100])
def test_sorting_network_sorts_like_torch_sort(n, kind, dtype):
    from fedsec.strategies._order import sort_columns_

    updates = random_updates(kind, n, 97, dtype, torch.Generator().manual_seed(n))
    ordered = updates.clone()
    sort_columns_(ordered, torch.empty(updates.numel(), dtype=dtype))
    assert torch.equal(ordered, torch.sort(updates, dim=0).values)


@pytest.mark.parametrize("chunk_bytes", [512, 4 << 20])  # many chunks (last one narrower), or one
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 5, 6, 11, 40])
def test_median_and_trimmed_mean_equal_the_sort_based_kernels(n, kind, dtype, chunk_bytes, monkeypatch):
    monkeypatch.setattr("fedsec.strategies._order.CPU_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr("fedsec.strategies._linalg.MIN_THREAD_WORK", 1)  # split even these small inputs
    updates = random_updates(kind, n, 301, dtype, torch.Generator().manual_seed(7 * n))
    aggregate, weights = coordinate_median(updates)
    expected, expected_weights = reference_median(updates)
    assert torch.equal(aggregate, expected)  # same values, same arithmetic
    torch.testing.assert_close(weights, expected_weights)
    for k in sorted({0, min(1, (n - 1) // 2), (n - 1) // 2}):
        aggregate, weights = trimmed_mean(updates, num_trimmed=k)
        expected, expected_weights = reference_trimmed_mean(updates, k)
        torch.testing.assert_close(aggregate, expected)
        torch.testing.assert_close(weights, expected_weights)


@pytest.mark.parametrize("chunk_bytes", [512, 4 << 20])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("n", "f"), [(3, 0), (7, 1), (10, 1), (11, 2), (16, 3), (19, 3), (23, 4)])
def test_bulyan_equals_a_loop_over_coordinates(n, f, kind, chunk_bytes, monkeypatch):
    # n < 6f (11/2, 16/3) averages fewer ranks than it trims: the other branch of the window sum
    monkeypatch.setattr("fedsec.strategies._order.CPU_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr("fedsec.strategies._linalg.MIN_THREAD_WORK", 1)
    updates = random_updates(kind, n, 53, torch.float64, torch.Generator().manual_seed(n + f))
    aggregate, weights = bulyan_aggregate(updates, num_malicious=f)
    expected, expected_weights = reference_bulyan(updates, f)
    torch.testing.assert_close(aggregate, expected)
    torch.testing.assert_close(weights, expected_weights)


@pytest.mark.parametrize("kind", ["few values", "sparse"])
def test_order_statistics_on_wide_chunks_of_tied_columns(kind):
    """Over a thousand tied columns in one chunk take the row-by-row running count (fewer take ``cumsum``)."""
    updates = random_updates(kind, 23, 2500, torch.float64, torch.Generator().manual_seed(11))
    for ours, reference in [
        (coordinate_median(updates), reference_median(updates)),
        (trimmed_mean(updates, num_trimmed=4), reference_trimmed_mean(updates, 4)),
        (bulyan_aggregate(updates, num_malicious=2), reference_bulyan(updates, 2)),
    ]:
        for got, expected in zip(ours, reference, strict=True):
            torch.testing.assert_close(got, expected.to(got.dtype))


def test_bulyan_equals_topk_around_the_median_without_ties():
    """Without ties the beta values closest to the median are unique: the topk formulation gives the same."""
    updates = torch.randn(23, 500, generator=torch.Generator().manual_seed(3))
    f = 4
    theta, beta = 23 - 2 * f, 23 - 4 * f
    selected = multikrum_select(updates, num_malicious=f, num_selected=theta)
    kept = updates[selected]
    median, _ = reference_median(kept)
    closest = torch.topk((kept - median).abs(), beta, dim=0, largest=False).indices
    used = torch.zeros_like(kept).scatter_(0, closest, 1.0 / beta)
    expected_weights = torch.zeros(23)
    expected_weights[selected] = used.mean(dim=1)
    aggregate, weights = bulyan_aggregate(updates, num_malicious=f)
    torch.testing.assert_close(aggregate, torch.gather(kept, 0, closest).mean(dim=0))
    torch.testing.assert_close(weights, expected_weights)


def cdist_krum_scores(updates, f):
    """Krum scores from exact pairwise differences in float64 (torch.cdist without the matrix-product shortcut)."""
    distances = torch.cdist(updates.double(), updates.double(), compute_mode="donot_use_mm_for_euclid_dist").square()
    distances.fill_diagonal_(float("inf"))
    return torch.topk(distances, updates.shape[0] - f - 2, dim=1, largest=False).values.sum(dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "f", "d"), [(7, 1, 5), (12, 2, 3000), (40, 5, 20_000), (100, 10, 1000)])
def test_gram_krum_equals_cdist_krum(n, f, d, dtype):
    g = torch.Generator().manual_seed(n)
    updates = torch.randn(n, d, generator=g, dtype=dtype) + 3.0 * torch.randn(d, generator=g, dtype=dtype)
    updates[0] *= 100.0  # a far outlier: the other distances must not lose precision to it
    expected = cdist_krum_scores(updates, f)
    torch.testing.assert_close(krum_scores(updates, num_malicious=f).double(), expected, rtol=1e-5, atol=0)
    m = n // 2
    assert multikrum_select(updates, num_malicious=f, num_selected=m).tolist() == (
        torch.sort(expected, stable=True).indices[:m].tolist()
    )


def test_krum_distances_keep_their_precision_under_a_shared_component():
    """Honest updates that share a large common step: ||a||^2 + ||b||^2 - 2 a.b would cancel in float32 without
    the shift by the median-norm update (torch.cdist, which the rule used before, loses ~1e-3 here)."""
    from fedsec.strategies.multikrum import pairwise_squared_distances

    g = torch.Generator().manual_seed(0)
    updates = 30.0 * torch.randn(200_000, generator=g) + torch.randn(30, 200_000, generator=g)
    updates[0] += 1e3 * torch.randn(200_000, generator=g)
    exact = torch.cdist(updates.double(), updates.double(), compute_mode="donot_use_mm_for_euclid_dist").square()
    distances = pairwise_squared_distances(updates)
    off_diagonal = ~torch.eye(30, dtype=torch.bool)
    assert float(((distances - exact).abs() / exact)[off_diagonal].max()) < 1e-5
    assert torch.equal(distances, distances.T) and not distances.diagonal().any()


def test_krum_ties_go_to_the_lower_index():
    updates = t([[0, 0], [0, 0], [1, 0], [1, 0], [5, 5], [5, 5], [0, 1]])
    scores = krum_scores(updates, num_malicious=1)
    assert scores[0] == scores[1] and scores[4] == scores[5]
    order = multikrum_select(updates, num_malicious=1, num_selected=7).tolist()
    assert order == torch.sort(scores.double(), stable=True).indices.tolist()
    assert order.index(0) < order.index(1) and order.index(4) < order.index(5)
