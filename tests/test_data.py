"""Datasets (IDX parsing, Fashion-MNIST, digits, FedProx synthetic) and partition properties."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsec.data import (
    DATASETS,
    PARTITIONS,
    DatasetError,
    PartitionError,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    make_synthetic,
    partition_indices,
    read_idx,
)
from fedsec.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from fedsec.data.federated import FederatedData, WorkerData

FMNIST = Path("/usr/share/datasets/fashion-mnist")
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes, written by hand (big-endian dims and body)."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


# --- IDX parsing and Fashion-MNIST ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_idx_parser_reads_handmade_files(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, images)
    out = read_idx(tmp_path / name)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and np.array_equal(out, images)
    # multi-byte types are big-endian on disk and come back in native order
    ints = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / ("i" + name), ints)
    got = read_idx(tmp_path / ("i" + name))
    assert got.tolist() == [1, -2, 70000] and got.dtype.isnative
    # the exact bytes for a 1-d uint8 file: magic 0x00000801, one dim of 3
    (tmp_path / "lit.idx").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x00\xff")
    assert read_idx(tmp_path / "lit.idx").tolist() == [7, 0, 255]


def test_idx_parser_rejects_corrupt_files(tmp_path):
    bad_magic = tmp_path / "bad.idx"
    bad_magic.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 8)
    with pytest.raises(DatasetError, match=r"bad\.idx.*bad magic number 0x01020304"):
        read_idx(bad_magic)
    bad_dtype = tmp_path / "dtype.idx"
    bad_dtype.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetError, match=r"dtype\.idx.*bad magic"):
        read_idx(bad_dtype)
    short_header = tmp_path / "header.idx"
    short_header.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(DatasetError, match=r"header\.idx.*truncated IDX header"):
        read_idx(short_header)
    truncated = tmp_path / "short.idx.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 2), np.uint8))[:-3]))
    with pytest.raises(DatasetError, match=r"short\.idx\.gz.*body has 5 bytes.*promises 8"):
        read_idx(truncated)
    trailing = tmp_path / "long.idx"
    trailing.write_bytes(idx_bytes(np.zeros((4, 2), np.uint8)) + b"\x00")
    with pytest.raises(DatasetError, match=r"long\.idx.*body has 9 bytes.*promises 8"):
        read_idx(trailing)
    not_gzip = tmp_path / "plain.idx.gz"
    not_gzip.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match=r"plain\.idx\.gz.*cannot read"):
        read_idx(not_gzip)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.*apt-get install dataset-fashion-mnist\).*data\.root"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)  # the directory exists but is empty


def test_fashion_mnist_loader_on_handmade_files(tmp_path):
    """Both .gz and uncompressed names are found; pixels are scaled to [0, 1] and normalised exactly."""
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([9, 0, 4], np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2], np.uint8))
    data = load_fashion_mnist(tmp_path)
    assert data.x_train.shape == (3, 1, 28, 28) and data.x_test.shape == (2, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64 and data.input_shape == (1, 28, 28)
    assert data.y_train.tolist() == [9, 0, 4] and data.y_test.tolist() == [1, 2]
    expected = (train_x[:, None] / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    np.testing.assert_allclose(data.x_train, expected, rtol=0, atol=1e-6)
    assert data.x_train[0, 0, 0, 0] == pytest.approx((train_x[0, 0, 0] / 255 - 0.2860) / 0.3530, abs=1e-6)
    # image/label count mismatch
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8))
    with pytest.raises(DatasetError, match="t10k has 2 images but 3 labels"):
        load_fashion_mnist(tmp_path)
    # images of the wrong size are refused, naming the file
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: expected N x 28 x 28"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    data = load_dataset("fashion-mnist")
    assert data.name == "fashion-mnist" and data.num_classes == 10 and data.natural_partition is None
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert np.bincount(data.y_train).tolist() == [6000] * 10
    assert np.bincount(data.y_test).tolist() == [1000] * 10
    # the normalisation constants are Fashion-MNIST's own: the train set comes out at mean ~0, std ~1
    assert abs(float(data.x_train.mean())) < 0.01 and abs(float(data.x_train.std()) - 1) < 0.01
    assert data.x_train.min() == pytest.approx(-0.2860 / 0.3530, abs=1e-6)


# --- digits and synthetic -----------------------------------------------------------------------------------------


def test_the_digits_split_read_back_from_the_cache_equals_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = load_digits(seed=7)
    [cached_file] = (tmp_path / "fedsec" / "digits").glob("*seed-7.npz")
    again = load_digits(seed=7)  # read back
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(fresh, key), getattr(again, key))
    cached_file.write_bytes(b"not an npz")  # a damaged cache is ignored and rewritten
    assert np.array_equal(load_digits(seed=7).y_test, fresh.y_test)
    assert np.array_equal(np.load(cached_file)["y_test"], fresh.y_test)


def test_digits_split_is_stratified_and_seeded():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_dataset("digits", seed=1)
    assert a.name == "digits" and a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_test) == 1797 and len(a.x_test) == 450
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() == 0 and a.x_train.max() == 1  # 0..16 scaled by 1/16
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    # stratified: each class's test count is within one of 25% of its total
    totals = np.bincount(np.concatenate([a.y_train, a.y_test]))
    assert np.all(np.abs(np.bincount(a.y_test) - 0.25 * totals) <= 1)


def test_synthetic_shapes_sizes_and_determinism():
    a = make_synthetic(num_clients=12, seed=3)
    b = load_dataset("synthetic", num_clients=12, seed=3)
    c = make_synthetic(num_clients=12, seed=4)
    assert a.name == "synthetic" and a.num_classes == 10 and a.input_shape == (60,)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.y_train.min() >= 0 and a.y_train.max() < 10
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)
    # natural partition: one contiguous block per device, covering the train set exactly once
    assert len(a.natural_partition) == 12
    covered = np.concatenate(a.natural_partition)
    assert np.array_equal(covered, np.arange(len(a.x_train)))
    # per device: lognormal(4, 2) + 50 samples, capped at 1,000; 20% of each held out
    train_sizes = np.array([p.size for p in a.natural_partition])
    totals = len(a.x_train) + len(a.x_test)
    assert np.all(train_sizes >= 40) and np.all(train_sizes <= 800)
    assert abs(len(a.x_test) / totals - 0.2) < 0.01
    big = make_synthetic(num_clients=200, seed=0, test_fraction=0.0)
    sizes = np.array([p.size for p in big.natural_partition])
    assert len(big.x_test) == 0 and sizes.min() >= 50 and sizes.max() == 1000  # the cap binds for some devices
    assert np.median(sizes) < 200  # a power law: most devices are small


def test_synthetic_is_heterogeneous_and_beta_controls_feature_shift():
    a = make_synthetic(num_clients=10, seed=3)
    dists = np.array([np.bincount(a.y_train[p], minlength=10) / len(p) for p in a.natural_partition])
    # mean total-variation distance between a device's label distribution and the average one
    assert 0.5 * np.abs(dists - dists.mean(0)).sum(1).mean() > 0.5
    # per-device feature means: B_k ~ N(0, beta) shifts them, so their spread grows with beta
    spread = {}
    for beta in (0.0, 5.0):
        d = make_synthetic(num_clients=20, alpha=0.0, beta=beta, seed=0)
        spread[beta] = np.std([d.x_train[p].mean() for p in d.natural_partition])
    assert spread[0.0] < 0.5 < 2.0 < spread[5.0], spread


def test_dataset_errors():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="test_fraction"):
        make_synthetic(test_fraction=1.0)
    with pytest.raises(DatasetError, match="alpha and beta must be >= 0"):
        make_synthetic(alpha=-1)
    assert set(DATASETS) == {"fashion-mnist", "digits", "synthetic", "cifar10", "cifar100", "emnist", "femnist"}
    assert set(PARTITIONS) == {"iid", "dirichlet", "shards", "natural", "sampled", "pathological", "size", "linear",
                               "square", "exponential"}
    # the config's Literal and the partitioners agree
    from typing import get_args

    from fedsec.config import DataConfig

    assert set(get_args(DataConfig.model_fields["partition"].annotation)) == set(PARTITIONS)


# --- partitions ---------------------------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class
SHUFFLED = np.random.default_rng(7).permutation(LABELS)


def max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the largest class's share of the client's data (1.0 = one class per client)."""
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / p.size for p in parts]))


@pytest.mark.parametrize("labels", [LABELS, SHUFFLED], ids=["sorted", "shuffled"])
@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partitions_cover_every_sample_once(kind, labels):
    parts = partition_indices(labels, kind=kind, num_clients=20, seed=0, alpha=0.5)
    assert len(parts) == 20 and all(p.size > 0 for p in parts)
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    assert sum(p.size for p in parts) == labels.size
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))  # disjoint and covering
    again = partition_indices(labels, kind=kind, num_clients=20, seed=0, alpha=0.5)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    other = partition_indices(labels, kind=kind, num_clients=20, seed=1, alpha=0.5)
    assert not all(np.array_equal(p, q) for p, q in zip(parts, other, strict=True))


def test_iid_sizes_differ_by_at_most_one_and_mix_classes():
    sizes = [p.size for p in partition_indices(np.zeros(1003), kind="iid", num_clients=10, seed=0)]
    assert sorted(sizes) == [100] * 7 + [101] * 3
    parts = partition_indices(LABELS, kind="iid", num_clients=10, seed=0)  # label-sorted input is shuffled
    assert max_class_share(LABELS, parts) < 0.25 and all(len(np.unique(LABELS[p])) >= 8 for p in parts)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = max_class_share(LABELS, partition_indices(LABELS, kind="dirichlet", num_clients=10, seed=0, alpha=0.1))
    flat = max_class_share(LABELS, partition_indices(LABELS, kind="dirichlet", num_clients=10, seed=0, alpha=100))
    assert skewed > 0.45 and flat < 0.2 and skewed - flat > 0.3, (skewed, flat)


def test_dirichlet_min_size_and_retries():
    parts = partition_indices(SHUFFLED, kind="dirichlet", num_clients=10, seed=0, alpha=0.5, min_size=50)
    assert min(p.size for p in parts) >= 50 and sum(p.size for p in parts) == 1000
    with pytest.raises(PartitionError, match="need 1100 samples, got 1000"):
        partition_indices(SHUFFLED, kind="dirichlet", num_clients=10, seed=0, min_size=110)
    with pytest.raises(PartitionError, match="in 11 tries"):  # 100 clients, 10 each, alpha tiny: never met
        partition_indices(SHUFFLED, kind="dirichlet", num_clients=100, seed=0, alpha=0.01, min_size=10)


def test_flwr_datasets_splits_read_back_from_the_cache_equal_fresh_ones(tmp_path, monkeypatch):
    from fedsec.data import partition

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = partition_indices(SHUFFLED, kind="dirichlet", num_clients=10, seed=3, alpha=0.5)
    [kept] = (tmp_path / "fedsec" / "partitions").glob("dirichlet-*.npz")
    with monkeypatch.context() as m:  # read back without flwr-datasets
        m.setattr(partition, "_dirichlet", lambda *a: pytest.fail("split again instead of read back"))
        again = partition_indices(SHUFFLED, kind="dirichlet", num_clients=10, seed=3, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(fresh, again, strict=True))
    other = partition_indices(SHUFFLED, kind="dirichlet", num_clients=10, seed=4, alpha=0.5)  # another seed: its own
    assert len(list(kept.parent.glob("*.npz"))) == 2 and not np.array_equal(other[0], fresh[0])
    kept.write_bytes(b"not an npz")  # a damaged entry is ignored and rewritten
    assert all(np.array_equal(a, b) for a, b in zip(
        fresh, partition_indices(SHUFFLED, kind="dirichlet", num_clients=10, seed=3, alpha=0.5), strict=True))
    assert np.array_equal(np.load(kept)["offsets"][1:], np.cumsum([p.size for p in fresh]))
    sized = dict(kind="size", num_clients=3, seed=0, partition_sizes=[10, 20, 30])
    assert [p.size for p in partition_indices(SHUFFLED, **sized)] == [10, 20, 30]
    assert [p.size for p in partition_indices(SHUFFLED, **sized)] == [10, 20, 30]  # read back


def test_shards_give_each_client_at_most_shards_per_client_classes():
    parts = partition_indices(LABELS, kind="shards", num_clients=10, seed=0, shards_per_client=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert [p.size for p in parts] == [100] * 10
    parts = partition_indices(SHUFFLED, kind="shards", num_clients=25, seed=3, shards_per_client=4)  # shards of 10
    assert all(len(np.unique(SHUFFLED[p])) <= 4 for p in parts) and [p.size for p in parts] == [40] * 25
    # uneven: 997 samples, 7 x 2 shards; nothing is dropped and shard sizes differ by at most 1
    parts = partition_indices(LABELS[:997], kind="shards", num_clients=7, seed=0, shards_per_client=2)
    assert sum(p.size for p in parts) == 997 and max(p.size for p in parts) - min(p.size for p in parts) <= 2


def test_natural_partition_is_passed_through_and_checked():
    natural = [np.array([4, 0, 2]), np.array([1, 3])]
    parts = partition_indices(np.zeros(5), kind="natural", num_clients=2, seed=0, natural=natural)
    assert [p.tolist() for p in parts] == [[0, 2, 4], [1, 3]]
    data = make_synthetic(num_clients=5, seed=0)
    parts = partition_indices(data.y_train, kind="natural", num_clients=5, seed=9, natural=data.natural_partition)
    assert all(np.array_equal(p, q) for p, q in zip(parts, data.natural_partition, strict=True))
    with pytest.raises(PartitionError, match="some sample to two clients"):
        partition_indices(np.zeros(5), kind="natural", num_clients=2, seed=0, natural=[np.arange(3), np.arange(2, 5)])
    with pytest.raises(PartitionError, match=r"outside \[0, 5\)"):
        partition_indices(np.zeros(5), kind="natural", num_clients=2, seed=0, natural=[np.arange(3), np.array([7])])
    with pytest.raises(PartitionError, match=r"clients \[1\] got no data"):
        partition_indices(np.zeros(5), kind="natural", num_clients=2, seed=0, natural=[np.arange(3), np.array([])])


def test_sampled_partition_serves_more_clients_than_samples():
    parts = partition_indices(LABELS, kind="sampled", num_clients=3000, seed=0, samples_per_client=6)
    assert len(parts) == 3000 and all(p.size == 6 and p.dtype == np.int64 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, distinct within a client
    used = np.concatenate(parts)
    assert used.min() >= 0 and used.max() < LABELS.size
    assert np.unique(used).size > 0.95 * LABELS.size  # 18,000 draws of 1,000 samples cover nearly all of them
    again = partition_indices(LABELS, kind="sampled", num_clients=3000, seed=0, samples_per_client=6)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    other = partition_indices(LABELS, kind="sampled", num_clients=3000, seed=1, samples_per_client=6)
    assert not all(np.array_equal(p, q) for p, q in zip(parts, other, strict=True))
    with pytest.raises(PartitionError, match=r"samples_per_client=1001 must be in 1..1000"):
        partition_indices(LABELS, kind="sampled", num_clients=3, seed=0, samples_per_client=1001)


def test_impossible_partitions_are_refused():
    with pytest.raises(PartitionError, match="2000 clients but only 1000 samples"):
        partition_indices(LABELS, kind="iid", num_clients=2000, seed=0)
    with pytest.raises(PartitionError, match="num_clients must be >= 1"):
        partition_indices(LABELS, kind="iid", num_clients=0, seed=0)
    with pytest.raises(PartitionError, match="need at least 1200 samples, got 1000"):
        partition_indices(LABELS, kind="shards", num_clients=600, seed=0, shards_per_client=2)
    with pytest.raises(PartitionError, match="no natural partition"):
        partition_indices(LABELS, kind="natural", num_clients=10, seed=0)
    with pytest.raises(PartitionError, match="split across 2 clients, the config asks for 3"):
        partition_indices(LABELS, kind="natural", num_clients=3, seed=0, natural=[np.arange(5), np.arange(5, 9)])
    with pytest.raises(PartitionError, match="unknown partition 'zipf'"):
        partition_indices(LABELS, kind="zipf", num_clients=3, seed=0)
    with pytest.raises(PartitionError, match="alpha must be > 0"):
        partition_indices(LABELS, kind="dirichlet", num_clients=3, seed=0, alpha=0)


# --- flwr-datasets partitioners -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "square", "exponential"])
def test_size_skewed_partitions_follow_flwr_datasets_sizes_and_the_seed(kind):
    # 5 clients over 1,000 samples; shares i / 15, i^2 / 55, e^i / 233.2, rounded down, the remainder to the last:
    # linear 66, 133, 200, 266, 333 (+2); square 18, 72, 163, 290, 454 (+3); exponential 11, 31, 86, 234, 636 (+2)
    expected = {"linear": [66, 133, 200, 266, 335], "square": [18, 72, 163, 290, 457],
                "exponential": [11, 31, 86, 234, 638]}[kind]
    parts = partition_indices(SHUFFLED, kind=kind, num_clients=5, seed=0)
    assert [p.size for p in parts] == expected
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))  # disjoint and covering
    again = partition_indices(SHUFFLED, kind=kind, num_clients=5, seed=0)
    other = partition_indices(SHUFFLED, kind=kind, num_clients=5, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    assert [p.size for p in other] == expected and not np.array_equal(parts[0], other[0])
    # members are a seeded shuffle, not the first rows: the smallest client mixes classes of a label-sorted input
    assert len(np.unique(LABELS[partition_indices(LABELS, kind=kind, num_clients=5, seed=0)[0]])) >= 5


def test_size_partition_gives_each_client_its_size():
    parts = partition_indices(SHUFFLED, kind="size", num_clients=3, seed=2, partition_sizes=[5, 100, 20])
    assert [p.size for p in parts] == [5, 100, 20] and np.unique(np.concatenate(parts)).size == 125
    assert all(np.array_equal(p, q) for p, q in zip(
        parts, partition_indices(SHUFFLED, kind="size", num_clients=3, seed=2, partition_sizes=[5, 100, 20]),
        strict=True))
    with pytest.raises(PartitionError, match=r"size: partition_sizes needs one size per client \(3\), got 2"):
        partition_indices(SHUFFLED, kind="size", num_clients=3, seed=0, partition_sizes=[5, 5])
    with pytest.raises(PartitionError, match=r"sum to at most 1000 \(the training set\), got sum 1001"):
        partition_indices(SHUFFLED, kind="size", num_clients=2, seed=0, partition_sizes=[1, 1000])


def test_exponential_refuses_clients_it_would_leave_empty():
    # 12 clients: the first client's share e^1 / sum e^k ~ 1e-5 of 1,000 samples rounds down to 0
    with pytest.raises(PartitionError, match=r"exponential: 12 clients over 1000 samples leave the smallest client"):
        partition_indices(SHUFFLED, kind="exponential", num_clients=12, seed=0)


def test_pathological_gives_each_client_exactly_k_classes():
    parts = partition_indices(SHUFFLED, kind="pathological", num_clients=10, seed=0, classes_per_client=3)
    classes = [set(SHUFFLED[p].tolist()) for p in parts]
    assert all(len(c) == 3 for c in classes)
    assert all(i in c for i, c in enumerate(classes))  # first-deterministic: client i has class i (10 classes)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))  # every class used: nothing left out
    # each class is cut equally among the clients holding it
    for label in range(10):
        holders = [p for p, c in zip(parts, classes, strict=True) if label in c]
        shares = [int(np.sum(SHUFFLED[p] == label)) for p in holders]
        assert sum(shares) == 100 and max(shares) - min(shares) <= 1
    again = partition_indices(SHUFFLED, kind="pathological", num_clients=10, seed=0, classes_per_client=3)
    other = partition_indices(SHUFFLED, kind="pathological", num_clients=10, seed=4, classes_per_client=3)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    assert [set(SHUFFLED[p].tolist()) for p in other] != classes
    # deterministic: client i has classes i, i+1 mod 10 (classes 5..9 go to no one)
    with pytest.warns(UserWarning, match=r"classes \[5, 6, 7, 8, 9\] went to no client"):
        parts = partition_indices(SHUFFLED, kind="pathological", num_clients=4, seed=0, classes_per_client=2,
                                  class_assignment="deterministic")
    assert [sorted(set(SHUFFLED[p].tolist())) for p in parts] == [[0, 1], [1, 2], [2, 3], [3, 4]]


def test_pathological_warns_about_unused_classes_and_refuses_impossible_ones():
    with pytest.warns(UserWarning, match=r"classes \[4, 5, 6, 7, 8, 9\] went to no client.*600 samples are left out"):
        parts = partition_indices(SHUFFLED, kind="pathological", num_clients=3, seed=0, classes_per_client=2,
                                  class_assignment="deterministic")
    assert sum(p.size for p in parts) == 400
    with pytest.raises(PartitionError, match=r"classes_per_client=11 must be in 1..10"):
        partition_indices(SHUFFLED, kind="pathological", num_clients=3, seed=0, classes_per_client=11)
    few = np.repeat(np.arange(2), 3)  # 3 samples per class, 5 clients all wanting both classes
    with pytest.raises(PartitionError, match=r"pathological: 5 clients x 2 classes cannot be dealt"):
        partition_indices(few, kind="pathological", num_clients=5, seed=0, classes_per_client=2)


def test_partition_keys_are_validated_in_the_config():
    import tomllib

    from fedsec.errors import ConfigError
    from fedsec.plan import plan_from_dict

    def plan(**data):
        return plan_from_dict({"data": {"dataset": "digits", "num_clients": 3, **data}, "model": {"name": "logreg"},
                               "train": {"clients_per_round": 3}})

    with pytest.raises(ConfigError, match=r"data.partition_sizes: partition = 'size' needs one size per client, "
                                          r"data.num_clients = 3, got none; give 3 sizes"):
        plan(partition="size")
    with pytest.raises(ConfigError, match=r"got 2; give 3 sizes"):
        plan(partition="size", partition_sizes=[10, 20])
    with pytest.raises(ConfigError, match=r"data.partition_sizes.1"):
        plan(partition="size", partition_sizes=[10, 0, 5])
    with pytest.raises(ConfigError, match=r"data.classes_per_client"):
        plan(partition="pathological", classes_per_client=0)
    with pytest.raises(ConfigError, match=r"data.class_assignment"):
        plan(partition="pathological", class_assignment="roundrobin")
    # the resolved config (what config.toml and --resume read) carries the keys and validates again
    sized = plan(partition="size", partition_sizes=[10, 20, 30])
    again = plan_from_dict(tomllib.loads(sized.to_toml()))
    assert again.experiment.data.partition_sizes == [10, 20, 30]
    from fedsec.data.federated import build_federated_data

    data = build_federated_data(again.experiment.data, again.experiment.seed)
    assert [p.size for p in data.partitions] == [10, 20, 30]
    path = plan(partition="pathological", classes_per_client=3, num_clients=10)
    data = build_federated_data(path.experiment.data, path.experiment.seed)
    assert all(np.unique(data.y_train[p]).size == 3 for p in data.partitions)


def _read_only_federated_data() -> FederatedData:
    """Four clients over 10 examples of shape (1, 2, 2), the arrays read-only as Ray's zero-copy fetch hands them
    to a worker."""
    x = np.arange(40, dtype=np.float32).reshape(10, 1, 2, 2)
    y = np.arange(10, dtype=np.int64) % 3
    partitions = [np.array([3, 0, 7]), np.array([1, 8]), np.array([2, 5, 9]), np.array([4, 6])]
    for a in (x, y):
        a.flags.writeable = False
    return FederatedData(x, y, x[:0].copy(), y[:0].copy(), partitions, num_classes=3)


def test_a_cpu_worker_copies_out_only_the_clients_own_examples():
    data = _read_only_federated_data()
    worker = WorkerData(data=data, device=torch.device("cpu"))
    assert worker.x_on_device is None  # no copy of the whole set on the CPU
    x, y = worker.client_tensors(2)
    torch.testing.assert_close(x, torch.tensor([[[[8.0, 9.0], [10.0, 11.0]]], [[[20.0, 21.0], [22.0, 23.0]]],
                                                [[[36.0, 37.0], [38.0, 39.0]]]]))  # rows 2, 5 and 9, in that order
    assert y.tolist() == [2, 2, 0] and y.dtype == torch.int64
    x.add_(100.0)  # a client's tensors are its own: writing them leaves the shared arrays as they were
    y.zero_()
    assert data.x_train[2, 0, 0, 0] == 8.0 and data.y_train[2] == 2
    assert not np.shares_memory(x.numpy(), data.x_train)


def test_a_workers_data_max_is_the_largest_input_value():
    assert WorkerData(data=_read_only_federated_data(), device=torch.device("cpu")).data_max == 39.0
