"""Datasets (IDX parsing, Fashion-MNIST, digits, synthetic) and partition properties."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedsec.data import (
    DatasetError,
    PartitionError,
    load_digits,
    load_fashion_mnist,
    make_synthetic,
    partition_indices,
)
from fedsec.data.datasets import read_idx

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1" if dtype_code == 0x08 else ">i4").tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_parser_reads_handmade_files(tmp_path, compressed):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(images)
    path = tmp_path / ("x.idx.gz" if compressed else "x.idx")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and np.array_equal(out, images)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "i.idx").write_bytes(idx_bytes(ints, 0x0C))
    assert read_idx(tmp_path / "i.idx").tolist() == [1, -2, 70000]


def test_idx_parser_rejects_corrupt_files(tmp_path):
    bad_magic = tmp_path / "bad.idx"
    bad_magic.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="bad.idx.*bad magic"):
        read_idx(bad_magic)
    truncated = tmp_path / "short.idx"
    truncated.write_bytes(idx_bytes(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(DatasetError, match="short.idx.*promises 8"):
        read_idx(truncated)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    data = load_fashion_mnist(FMNIST)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.num_classes == 10
    assert np.bincount(data.y_train).tolist() == [6000] * 10
    assert abs(float(data.x_train.mean())) < 0.01 and abs(float(data.x_train.std()) - 1) < 0.01


def test_digits_split_is_stratified_and_seeded():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_train) + len(a.x_test) == 1797
    assert 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert np.array_equal(a.y_test, b.y_test) and not np.array_equal(a.y_test, c.y_test)
    assert np.bincount(a.y_test).min() >= 40  # every class in the 25% test split


def test_synthetic_is_seeded_federated_and_heterogeneous():
    a, b = make_synthetic(num_clients=10, seed=3), make_synthetic(num_clients=10, seed=3)
    assert np.array_equal(a.x_train, b.x_train) and a.x_train.shape[1] == 60
    covered = np.sort(np.concatenate(a.natural_partition))
    assert np.array_equal(covered, np.arange(len(a.x_train)))
    dists = np.array([np.bincount(a.y_train[p], minlength=10) / len(p) for p in a.natural_partition])
    assert np.abs(dists - dists.mean(0)).sum(1).mean() > 0.3  # label distributions differ across devices


LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partitions_cover_every_sample_once(kind):
    parts = partition_indices(LABELS, kind=kind, num_clients=20, seed=0, alpha=0.5)
    assert len(parts) == 20 and all(p.size > 0 for p in parts)
    everything = np.concatenate(parts)
    assert np.array_equal(np.sort(everything), np.arange(LABELS.size))
    again = partition_indices(LABELS, kind=kind, num_clients=20, seed=0, alpha=0.5)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    other = partition_indices(LABELS, kind=kind, num_clients=20, seed=1, alpha=0.5)
    assert not all(np.array_equal(p, q) for p, q in zip(parts, other, strict=True))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [p.size for p in partition_indices(np.zeros(1003), kind="iid", num_clients=10, seed=0)]
    assert max(sizes) - min(sizes) == 1 and sum(sizes) == 1003


def mean_max_class_share(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / p.size for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = mean_max_class_share(partition_indices(LABELS, kind="dirichlet", num_clients=10, seed=0, alpha=0.1))
    flat = mean_max_class_share(partition_indices(LABELS, kind="dirichlet", num_clients=10, seed=0, alpha=100))
    assert skewed > 0.5 and flat < 0.25, (skewed, flat)


def test_shards_give_each_client_at_most_two_classes():
    parts = partition_indices(LABELS, kind="shards", num_clients=10, seed=0, shards_per_client=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert [p.size for p in parts] == [100] * 10


def test_impossible_partitions_are_refused():
    with pytest.raises(PartitionError, match="2000 clients but only 1000 samples"):
        partition_indices(LABELS, kind="iid", num_clients=2000, seed=0)
    with pytest.raises(PartitionError, match="no natural partition"):
        partition_indices(LABELS, kind="natural", num_clients=10, seed=0)
    with pytest.raises(PartitionError, match="split across 2 clients"):
        partition_indices(LABELS, kind="natural", num_clients=3, seed=0, natural=[np.arange(5), np.arange(5, 9)])
    with pytest.raises(PartitionError, match="unknown partition"):
        partition_indices(LABELS, kind="zipf", num_clients=3, seed=0)
