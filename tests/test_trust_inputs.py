"""No reply drives any rule to a NaN/Inf model, and every bad reply is rejected and recorded.

Each shipped rule gets 8 honest replies plus one bad one (wrong dtype, huge values, bad partition id, bad count);
the bad one must be recorded as ``invalid: ...`` with a reason naming the problem, the aggregate must stay finite,
and aggregate_train must never raise. The kernels' own guards (GeoMed distances, FLTrust cosines, FoolsGold
similarities) are checked directly on updates whose intermediate products overflow float32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flower_messages import _instruction, arrays_of, started
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedsec.arrays import record_to_vector
from fedsec.strategies import (
    FLAME,
    Bulyan,
    CenteredClipping,
    DnC,
    FedAvg,
    FLTrust,
    FoolsGold,
    GeometricMedian,
    Krum,
    Median,
    MultiKrum,
    NormClipping,
    TrimmedMean,
    foolsgold_weights,
    geometric_median,
)
from fedsec.strategies.dp_fedavg import DPFedAvg
from fedsec.strategies.fltrust import fltrust_aggregate, fltrust_trust_scores

pytestmark = pytest.mark.usefixtures("server_identity")
SHAPES = {"w": (2, 3), "b": (3,)}
D = 9


def g0_fn(arrays):
    return torch.full((D,), 0.1)


RULES = {
    "fedavg": lambda: FedAvg(device="cpu"),
    "krum": lambda: Krum(num_malicious=1, device="cpu"),
    "multikrum": lambda: MultiKrum(num_malicious=1, num_selected=3, device="cpu"),
    "bulyan": lambda: Bulyan(num_malicious=1, device="cpu"),
    "median": lambda: Median(device="cpu"),
    "trimmed_mean": lambda: TrimmedMean(trim_ratio=0.2, device="cpu"),
    "geomed": lambda: GeometricMedian(device="cpu"),
    "norm_clipping": lambda: NormClipping(clip_norm=1.0, device="cpu"),
    "centered_clipping": lambda: CenteredClipping(clip_norm=1.0, device="cpu"),
    "fltrust": lambda: FLTrust(g0_fn, device="cpu"),
    "flame": lambda: FLAME(device="cpu"),
    "foolsgold": lambda: FoolsGold(device="cpu"),
    "dnc": lambda: DnC(num_malicious=1, device="cpu"),
    "dp_fedavg": lambda: DPFedAvg(clip_norm=1.0, noise_multiplier=0.1, expected_clients=7, device="cpu"),
}


def record(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


def make_reply(node_id: int, arrays: ArrayRecord, metrics: dict):
    return _message(node_id, RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}))


def _message(node_id, content):
    from flwr.app import Message

    return Message(content=content, reply_to=_instruction(node_id))


def honest(rng) -> list:
    out = []
    for i in range(8):
        values = {k: (0.1 + 0.01 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
        out.append(make_reply(100 + i, record(values), {"num-examples": 50, "partition-id": i}))
    return out


def bad_replies() -> dict[str, tuple]:
    """name -> (arrays values, metrics, words the recorded reason must contain)."""
    ones = {k: np.full(s, 0.1, dtype=np.float32) for k, s in SHAPES.items()}
    huge = {k: np.full(s, 1e30, dtype=np.float32) for k, s in SHAPES.items()}
    cast = lambda dt: {k: v.astype(dt) for k, v in ones.items()}  # noqa: E731
    ok = {"num-examples": 50, "partition-id": 8}
    return {
        "int64": (cast(np.int64), ok, "dtype"),
        "float16": (cast(np.float16), ok, "dtype"),
        "bool": (cast(np.bool_), ok, "dtype"),
        "complex64": (cast(np.complex64), ok, "dtype"),
        "float64": (cast(np.float64), ok, "dtype"),
        "huge_1e30": (huge, ok, "overflows"),
        "pid_nan": (ones, {"num-examples": 50, "partition-id": math.nan}, "partition-id"),
        "pid_inf": (ones, {"num-examples": 50, "partition-id": math.inf}, "partition-id"),
        "pid_fraction": (ones, {"num-examples": 50, "partition-id": 6.5}, "partition-id"),
        "pid_negative": (ones, {"num-examples": 50, "partition-id": -1}, "partition-id"),
        "pid_duplicate": (ones, {"num-examples": 50, "partition-id": 3}, "claimed by 2"),
        "count_1e39": (ones, {"num-examples": 1e39, "partition-id": 8}, "num-examples"),
        "count_1e300": (ones, {"num-examples": 1e300, "partition-id": 8}, "num-examples"),
        "count_half": (ones, {"num-examples": 0.5, "partition-id": 8}, "num-examples"),
        "count_zero": (ones, {"num-examples": 0, "partition-id": 8}, "num-examples"),
        "count_nan": (ones, {"num-examples": math.nan, "partition-id": 8}, "num-examples"),
    }


@pytest.mark.parametrize("bad", list(bad_replies()))
@pytest.mark.parametrize("rule", list(RULES))
def test_no_bad_reply_makes_a_rule_nan_or_raise(rule, bad):
    rng = np.random.default_rng(0)
    global_arrays = arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})
    values, metrics, words = bad_replies()[bad]
    replies = [*honest(rng), make_reply(200, record(values), metrics)]
    strategy = started(RULES[rule](), global_arrays)
    arrays, _ = strategy.aggregate_train(1, replies)
    decisions = strategy.last_report.decisions
    flagged = [d for d in decisions if d.status.startswith("invalid")]
    assert flagged, f"{rule}/{bad}: the bad reply was not rejected: {[d.status for d in decisions]}"
    assert all(words in d.status for d in flagged), [d.status for d in flagged]
    assert all(d.weight == 0 for d in flagged)
    if bad == "pid_duplicate":  # both replies claiming partition 3 are rejected, the other 7 aggregated
        assert len(flagged) == 2
    assert arrays is not None  # 7 or 8 honest updates remain: every rule aggregates them
    assert torch.isfinite(record_to_vector(arrays)).all()
    assert all(math.isfinite(d.weight) for d in decisions)


def test_reject_bytes_that_lie_about_their_dtype():
    """An Array whose declared dtype is the model's but whose .npy bytes hold float16 is rejected too."""
    global_arrays = arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})
    forged = record({k: np.full(s, 0.1, dtype=np.float16) for k, s in SHAPES.items()})
    for a in forged.values():
        a.dtype = "float32"
    rng = np.random.default_rng(1)
    strategy = started(FedAvg(device="cpu"), global_arrays)
    strategy.aggregate_train(1, [*honest(rng), make_reply(200, forged, {"num-examples": 50, "partition-id": 8})])
    status = strategy.last_report.decisions[-1].status
    assert status.startswith("invalid") and "float16" in status


def test_partition_id_out_of_range_when_the_run_size_is_known():
    global_arrays = arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})
    ones = {k: np.full(s, 0.1, dtype=np.float32) for k, s in SHAPES.items()}
    strategy = started(FedAvg(device="cpu", num_partitions=8), global_arrays)
    strategy.aggregate_train(1, [*honest(np.random.default_rng(2)),
                                 make_reply(200, record(ones), {"num-examples": 5, "partition-id": 8})])
    assert "below the 8 partitions" in strategy.last_report.decisions[-1].status


def test_geomed_distances_that_overflow_float32_stay_finite():
    # ||u_0 - u_1|| = 4e19: its square (1.6e39) overflows float32 inside distances_to; before the guard every
    # Weiszfeld weight became alpha / inf = 0 and the aggregate 0/0 = NaN
    updates = torch.tensor([[2e19, 0.0], [-2e19, 0.0], [0.0, 1.0], [0.0, 1.1], [0.0, 0.9]])
    aggregate, weights = geometric_median(updates, torch.ones(5), iterations=3)
    assert torch.isfinite(aggregate).all() and torch.isfinite(weights).all()
    assert abs(float(weights.sum()) - 1.0) < 1e-5
    assert float(weights[:2].max()) < 1e-10  # the two huge updates get a vanishing weight


def test_fltrust_cosine_of_a_huge_update_is_its_true_cosine():
    g0 = torch.tensor([1.0, 0.0, 0.0])
    updates = torch.tensor([[1.5e19, 1.5e19, 0.0], [1.0, 0.0, 0.0]])  # ||u_0|| ||g0|| is fine, ||u_0||^2 is not
    trust = fltrust_trust_scores(updates, g0)
    torch.testing.assert_close(trust, torch.tensor([1 / math.sqrt(2), 1.0]))
    aggregate, weights = fltrust_aggregate(updates, g0)
    assert torch.isfinite(aggregate).all()
    assert float(torch.linalg.vector_norm(aggregate)) <= 1.0 + 1e-5  # each update rescaled to ||g0|| = 1


def test_foolsgold_similarities_that_overflow_float32_stay_finite():
    histories = torch.tensor([[3e19, 3e19, 0.0], [3e19, 3e19, 1.0], [0.0, 1.0, 1.0]])  # Gram entries ~1.8e39
    alpha = foolsgold_weights(histories)
    assert torch.isfinite(alpha).all()
    # rows 0 and 1 point the same way (sybils: alpha 0), row 2 is unlike them (alpha 1)
    torch.testing.assert_close(alpha, torch.tensor([0.0, 0.0, 1.0]))
