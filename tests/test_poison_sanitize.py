"""Poisoned data at honest clients (fedsec.data.poison) and client-side sanitizers (fedsec.sanitize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsec.data import load_digits
from fedsec.data.poison import PoisonError, poison_client_data, poisoned_clients, square_trigger_mask
from fedsec.metrics.filtering import filter_quality
from fedsec.models import build_model
from fedsec.sanitize import SANITIZERS, SanitizeError, build_sanitizer
from fedsec.sanitize.threshold import MEAN_AD_SCALE


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _client(digits, n=300, offset=0):
    return digits.x_train[offset : offset + n], digits.y_train[offset : offset + n]


# ------------------------------------------------------------------------------------------------------- poisoning


@pytest.mark.parametrize("kind,keys", [("label_noise", {}), ("outliers", {}), ("trigger", {"target": 3})])
def test_poisoned_points_are_exactly_those_recorded(digits, kind, keys):
    x, y = _client(digits)
    p = poison_client_data(x, y, kind=kind, rate=0.2, num_classes=10, seed=7, **keys)
    assert p.num_poisoned == round(0.2 * 300) == 60
    changed = (p.x != x).reshape(300, -1).any(axis=1) | (p.y != y)
    if kind == "trigger":  # a point already stamped/of the target may look unchanged: every changed one is recorded
        assert not (changed & ~p.poisoned).any()
        stamp = square_trigger_mask(x.shape[1:], size=3)
        assert (p.x[p.poisoned][:, stamp] == x.max()).all() and (p.y[p.poisoned] == 3).all()
    else:  # label noise never keeps the true label; outliers replace every chosen input
        np.testing.assert_array_equal(changed, p.poisoned)
    np.testing.assert_array_equal(p.x[~p.poisoned], x[~p.poisoned])
    np.testing.assert_array_equal(p.y[~p.poisoned], y[~p.poisoned])
    assert x is not p.x and (x == digits.x_train[:300]).all()  # inputs untouched


def test_label_noise_never_keeps_the_label_and_spreads_over_other_classes(digits):
    x, y = _client(digits, 1000)
    p = poison_client_data(x, y, kind="label_noise", rate=1.0, num_classes=10, seed=0)
    assert (p.y != y).all()
    shift = (p.y - y) % 10  # uniform over 1..9: each shift should appear ~111 times
    counts = np.bincount(shift, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 60, counts


def test_targeted_flip_only_touches_the_source_class(digits):
    x, y = _client(digits)
    p = poison_client_data(x, y, kind="targeted_flip", rate=0.5, num_classes=10, seed=1, source=6, target=0)
    assert (y[p.poisoned] == 6).all() and (p.y[p.poisoned] == 0).all()
    assert p.num_poisoned == round(0.5 * (y == 6).sum())


def test_outliers_are_far(digits):
    x, y = _client(digits)
    p = poison_client_data(x, y, kind="outliers", rate=0.1, num_classes=10, seed=0, magnitude=10.0)
    dist = np.linalg.norm((p.x - x.mean(axis=0)).reshape(300, -1), axis=1)
    assert dist[p.poisoned].min() > 3 * dist[~p.poisoned].max()


@pytest.mark.parametrize("kind", ["label_noise", "outliers", "trigger"])
def test_same_seed_reproduces_and_other_seed_differs(digits, kind):
    x, y = _client(digits)
    a = poison_client_data(x, y, kind=kind, rate=0.3, num_classes=10, seed=5)
    b = poison_client_data(x, y, kind=kind, rate=0.3, num_classes=10, seed=5)
    c = poison_client_data(x, y, kind=kind, rate=0.3, num_classes=10, seed=6)
    np.testing.assert_array_equal(a.poisoned, b.poisoned)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert (a.poisoned != c.poisoned).any()


def test_poisoned_clients_fraction_ids_and_stream():
    chosen = poisoned_clients(50, clients=0.2, seed=3)
    assert len(chosen) == 10 and chosen == sorted(set(chosen)) and chosen == poisoned_clients(50, clients=0.2, seed=3)
    assert chosen != poisoned_clients(50, clients=0.2, seed=4)
    # its own stream: not the first draw of default_rng(seed), which other components use
    assert chosen != sorted(np.random.default_rng(3).choice(50, size=10, replace=False).tolist())
    assert poisoned_clients(5, clients=[3, 0], seed=0) == [0, 3]
    assert poisoned_clients(5, clients=0.0, seed=0) == []


@pytest.mark.parametrize(
    "call,needle",
    [
        (dict(kind="label_noise", rate=1.5), "data.poison.rate=1.5: must be in [0, 1]"),
        (dict(kind="label_noise", rate=-0.1), "data.poison.rate=-0.1"),
        (dict(kind="gaussian_blur", rate=0.1), "data.poison.kind='gaussian_blur': unknown kind"),
        (dict(kind="targeted_flip", rate=0.1, source=1), "needs both source and target"),
        (dict(kind="targeted_flip", rate=0.1, source=1, target=1), "data.poison.target=1: must differ"),
        (dict(kind="targeted_flip", rate=0.1, source=1, target=10), "data.poison.target=10"),
        (dict(kind="label_noise", rate=0.1, target=2), "do not apply to kind='label_noise'"),
        (dict(kind="outliers", rate=0.1, magnitude=-1), "data.poison.magnitude=-1"),
        (dict(kind="trigger", rate=0.1, trigger_size=7), "data.poison.trigger_size=7"),
    ],
)
def test_bad_poison_settings_name_the_key(digits, call, needle):
    x, y = _client(digits, 50)
    with pytest.raises(PoisonError) as err:
        poison_client_data(x, y, num_classes=10, seed=0, **call)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_trigger_on_vector_data_is_refused():
    x = np.zeros((20, 60), np.float32)
    with pytest.raises(PoisonError, match=r"kind='trigger': needs image inputs \(N, C, H, W\), got shape \(20, 60\)"):
        poison_client_data(x, np.zeros(20, np.int64), kind="trigger", rate=0.1, num_classes=10, seed=0)


@pytest.mark.parametrize(
    "clients,needle",
    [
        ([0, 1, 2, 3, 4, 5], "6 ids but data.num_clients=5"),
        ([0, 7], "ids [7] are not client ids"),
        ([1, 1], "ids repeat"),
        (1.5, "data.poison.clients=1.5: a fraction must be in [0, 1]"),
    ],
)
def test_bad_poisoned_clients_name_the_key(clients, needle):
    with pytest.raises(PoisonError) as err:
        poisoned_clients(5, clients=clients, seed=0)
    assert needle in str(err.value)


# ------------------------------------------------------------------------------------------------------ sanitizers


def _hand_made():
    """1-d points, two classes. Class 0: ten 0s and one 30 -> centroid 30/11; distances 30/11 (x10) and 300/11;
    mean distance 600/121; ratios 0.55 and 5.5 -> the survey's rule (>= 3.5 x mean) drops the 30 (index 10).
    Class 1: 10 +- 1, 2, 3, 12 -> centroid 10, distances 1,1,2,2,3,3,12,12; mean 4.5, so 12 < 3.5 * 4.5 = 15.75
    is kept by the mean rule; median 2.5, MAD = median(1.5,1.5,.5,.5,.5,.5,9.5,9.5) = 1, modified z of 12 =
    0.6745 * 9.5 = 6.41 > 3.5 -> robust_z also drops -2 and 22 (indices 17, 18). For class 0 MAD = 0, so robust_z
    uses 1.253314 x mean abs. deviation (270/121): z of the 30 = (270/11) / (1.253314 * 270/121) = 11 / 1.253314."""
    values = [0.0] * 10 + [30.0] + [9, 11, 8, 12, 7, 13, -2, 22]
    labels = [0] * 11 + [1] * 8
    return np.array(values, np.float64)[:, None], np.array(labels, np.int64)


def test_threshold_mean_ratio_drops_exactly_the_expected_points():
    x, y = _hand_made()
    result = build_sanitizer("threshold").filter(x, y, seed=0)
    np.testing.assert_array_equal(result.dropped, [10])
    torch.testing.assert_close(
        torch.as_tensor(result.scores[:11]), torch.tensor([0.55] * 10 + [5.5], dtype=torch.float64)
    )
    torch.testing.assert_close(float(result.scores[17]), 12 / 4.5)


def test_threshold_robust_z_drops_exactly_the_expected_points():
    x, y = _hand_made()
    result = build_sanitizer("threshold", variant="robust_z").filter(x, y, seed=0)
    np.testing.assert_array_equal(result.dropped, [10, 17, 18])
    torch.testing.assert_close(float(result.scores[10]), 11 / MEAN_AD_SCALE)
    torch.testing.assert_close(float(result.scores[17]), 0.6745 * 9.5)
    torch.testing.assert_close(float(result.scores[11]), 0.6745 * (1 - 2.5))


def test_threshold_per_class_statistic_matters():
    """Shifting one class far away changes nothing per class, while the global-centroid statistic sees it."""
    x, y = _hand_made()
    x_shifted = x + 1000.0 * (y == 1)[:, None]
    per_class = build_sanitizer("threshold", variant="robust_z").filter(x_shifted, y, seed=0)
    np.testing.assert_array_equal(per_class.dropped, [10, 17, 18])
    global_ = build_sanitizer("threshold", variant="robust_z", statistic="centroid").filter(x_shifted, y, seed=0)
    assert list(global_.dropped) != [10, 17, 18]


def test_identical_points_are_never_dropped():
    x = np.ones((6, 3))
    for variant in ("mean_ratio", "robust_z"):
        assert build_sanitizer("threshold", variant=variant).filter(x, np.zeros(6, np.int64)).keep.all()


def test_label_issues_finds_most_flipped_labels_on_a_digits_client(digits):
    """30% symmetric label noise on a 500-point digits client. Measured over 10 client draws (seeds 0..9, default
    C = 0.1): recall 0.84-0.93 (mean 0.875), precision >= 0.89 (benchmarks/bench_poison_sanitize.py times it); the
    bounds (recall 0.75, precision 0.8) leave margin for BLAS/platform differences."""
    idx = np.random.default_rng(100).choice(len(digits.y_train), 500, replace=False)
    p = poison_client_data(
        digits.x_train[idx], digits.y_train[idx], kind="label_noise", rate=0.3, num_classes=10, seed=0
    )
    result = build_sanitizer("label_issues").filter(p.x, p.y, seed=0)
    q = filter_quality(result.keep, p.poisoned)
    assert q.recall >= 0.75, f"cleanlab recall {q.recall:.3f} (precision {q.precision:.3f}) below 0.75"
    assert q.precision >= 0.8, f"cleanlab precision {q.precision:.3f} (recall {q.recall:.3f}) below 0.8"
    # suspicion scores rank the poisoned points higher on average
    assert result.scores[p.poisoned].mean() > result.scores[~p.poisoned].mean() + 0.3


def test_label_issues_with_the_global_model_as_starting_point(digits):
    x, y = _client(digits, 200)
    p = poison_client_data(x, y, kind="label_noise", rate=0.3, num_classes=10, seed=0)
    model = build_model("logreg", (1, 8, 8), 10, seed=0)
    before = [t.clone() for t in model.parameters()]
    sanitizer = build_sanitizer("label_issues", classifier="model", n_folds=3, epochs=5, lr=0.1)
    result = sanitizer.filter(torch.as_tensor(p.x), torch.as_tensor(p.y), model=model, seed=0)
    q = filter_quality(result.keep, p.poisoned)
    assert q.recall > 0.5, f"recall {q.recall:.3f}"
    for a, b in zip(before, model.parameters(), strict=True):  # the global model is never modified
        torch.testing.assert_close(a, b)
    with pytest.raises(SanitizeError, match="classifier='model' needs the global model"):
        sanitizer.filter(p.x, p.y, seed=0)


def test_isolation_forest_catches_far_outliers(digits):
    x, y = _client(digits)
    p = poison_client_data(x, y, kind="outliers", rate=0.05, num_classes=10, seed=0, magnitude=10.0)
    q = filter_quality(build_sanitizer("isolation_forest").filter(p.x, p.y, seed=0).keep, p.poisoned)
    assert q.recall == 1.0 and q.false_drop_rate <= 0.05, q


def test_isolation_forest_on_embeddings(digits):
    x, y = _client(digits, 200)
    p = poison_client_data(x, y, kind="outliers", rate=0.05, num_classes=10, seed=0, magnitude=10.0)
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    result = build_sanitizer("isolation_forest", features="embedding").filter(p.x, p.y, model=model, seed=0)
    assert filter_quality(result.keep, p.poisoned).recall == 1.0
    assert result.scores.shape == (200,)
    with pytest.raises(SanitizeError, match="features='embedding' needs the global model"):
        build_sanitizer("isolation_forest", features="embedding").filter(p.x, p.y, seed=0)


@pytest.mark.parametrize(
    "method,keys,needle",
    [
        ("median_filter", {}, "defense.sanitize.method='median_filter': unknown method; use one of"),
        ("threshold", {"k": 0}, "defense.sanitize.k=0: must be a number in (0.0"),
        ("threshold", {"variant": "zscore"}, "defense.sanitize.variant='zscore'"),
        ("threshold", {"contamination": 0.1}, "key(s) ['contamination'] do not apply to method='threshold'"),
        ("isolation_forest", {"contamination": 0.9}, "defense.sanitize.contamination=0.9"),
        ("label_issues", {"n_folds": 1}, "defense.sanitize.n_folds=1"),
    ],
)
def test_bad_sanitize_settings_name_the_key(method, keys, needle):
    with pytest.raises(SanitizeError) as err:
        build_sanitizer(method, **keys)
    assert needle in str(err.value)


def test_registry_and_input_checks():
    assert set(SANITIZERS) == {"threshold", "isolation_forest", "label_issues"}
    for name, cls in SANITIZERS.items():
        assert cls.method == name
    with pytest.raises(SanitizeError, match="x has 3 examples but y has 2"):
        build_sanitizer("threshold").filter(np.zeros((3, 2)), np.zeros(2, np.int64))
    with pytest.raises(SanitizeError, match="NaN or inf"):
        build_sanitizer("threshold").filter(np.full((3, 2), np.nan), np.zeros(3, np.int64))
    with pytest.raises(SanitizeError, match="n_folds=5: the client holds only 3 points"):
        build_sanitizer("label_issues").filter(np.zeros((3, 2)), np.zeros(3, np.int64))


def test_labels_outside_the_classes_are_refused_and_numpy_scalars_accepted(digits):
    x, y = _client(digits, 40)
    with pytest.raises(PoisonError, match=r"y must hold integer labels in \[0, 4\]"):
        poison_client_data(x, y, kind="label_noise", rate=0.1, num_classes=5, seed=0)
    p = poison_client_data(x, y, kind="label_noise", rate=np.float32(0.25), num_classes=10, seed=np.int64(0))
    assert p.num_poisoned == 10
