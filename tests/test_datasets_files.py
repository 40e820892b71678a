"""CIFAR-10/100, EMNIST and FEMNIST loaders on small files written here in each dataset's exact format: python
pickle batches, gzip'd IDX files, LEAF JSON; plans over them; one tiny CIFAR-10 run end to end."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsec.data import DATASETS, DatasetError, load_dataset, partition_indices
from fedsec.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, pooled
from fedsec.errors import ConfigError
from fedsec.plan import plan_from_dict

# --- writers of each format ----------------------------------------------------------------------------------------


def cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_batch(path: Path, batch: dict) -> None:
    """A batch as the CIFAR archives hold it: a protocol-2 pickle of a dict with bytes keys."""
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cifar-10-batches-py/ with batches of 1..5 images (15 train), a test batch of 3 and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = cifar_rows(rng, i), [int(v) for v in rng.integers(0, 10, i)]
        write_batch(folder / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y,
                                                 b"data": x, b"filenames": [b"f.png"] * i})
        xs.append(x)
        ys += y
    x_test, y_test = cifar_rows(rng, 3), [9, 0, 4]
    write_batch(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": y_test, b"data": x_test,
                                        b"filenames": [b"t.png"] * 3})
    write_batch(folder / "batches.meta", {b"label_names": [b"airplane", b"automobile"], b"num_cases_per_batch": 10000,
                                          b"num_vis": 3072})
    return np.concatenate(xs), np.array(ys), x_test, np.array(y_test)


def write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x, fine, coarse = cifar_rows(rng, 6), [0, 99, 5, 42, 17, 63], [4, 19, 0, 1, 3, 7]
    write_batch(folder / "train", {b"filenames": [b"a.png"] * 6, b"batch_label": b"training batch 1 of 1",
                                   b"fine_labels": fine, b"coarse_labels": coarse, b"data": x})
    write_batch(folder / "test", {b"filenames": [b"b.png"] * 2, b"batch_label": b"testing batch 1 of 1",
                                  b"fine_labels": [1, 2], b"coarse_labels": [3, 4], b"data": cifar_rows(rng, 2)})
    write_batch(folder / "meta", {b"fine_label_names": [b"apple"], b"coarse_label_names": [b"fish"]})
    return x, np.array(fine), np.array(coarse)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An IDX file (magic 0x0000, type 0x08 uint8, dims, big-endian sizes), gzip'd when the name ends in .gz."""
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_emnist(root: Path, split: str, labels: list[int], *, gz: bool = True) -> np.ndarray:
    """EMNIST's four files for ``split``: images stored transposed, as NIST's files are. Returns the upright images."""
    rng = np.random.default_rng(len(labels))
    upright = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    for part, images, ys in (("train", upright, labels), ("test", upright[:2], labels[:2])):
        write_idx_gz(root / f"emnist-{split}-{part}-images-idx3-ubyte{suffix}", images.transpose(0, 2, 1))
        write_idx_gz(root / f"emnist-{split}-{part}-labels-idx1-ubyte{suffix}", np.array(ys, np.uint8))
    return upright


def leaf_file(writers: dict[str, tuple[np.ndarray, list[int]]]) -> dict:
    return {"users": list(writers), "num_samples": [len(y) for _, y in writers.values()],
            "user_data": {u: {"x": x.reshape(len(y), 784).tolist(), "y": y} for u, (x, y) in writers.items()}}


def write_femnist(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Three writers in two all_data_*.json files (LEAF's all_data layout): 10, 4 and 6 samples."""
    rng = np.random.default_rng(3)
    writers = {name: (rng.integers(0, 256, (n, 28, 28)).astype(np.float32) / 255,
                      [int(v) for v in rng.integers(0, 62, n)])
               for name, n in (("f0000_14", 10), ("f0001_41", 4), ("f0007_03", 6))}
    folder = root / "all_data"
    folder.mkdir(parents=True)
    names = list(writers)
    (folder / "all_data_10.json").write_text(json.dumps(leaf_file({names[2]: writers[names[2]]})))
    (folder / "all_data_2.json").write_text(json.dumps(leaf_file({n: writers[n] for n in names[:2]})))
    return writers


# --- CIFAR ---------------------------------------------------------------------------------------------------------


def test_cifar_pooled_normalisation_is_the_per_channel_one_pooled():
    # mean of (0.4914, 0.4822, 0.4465) = 0.4734; var = mean(std^2) + var(means) = 0.06291 + 0.00038 -> std 0.2516
    assert (CIFAR10_MEAN, CIFAR10_STD) == (0.4734, 0.2516) and (CIFAR100_MEAN, CIFAR100_STD) == (0.4782, 0.2682)
    assert pooled((0.5, 0.5), (0.1, 0.1)) == pytest.approx((0.5, 0.1))
    assert DATASETS.get("cifar10").normalisation == (0.4734, 0.2516)


@pytest.mark.parametrize("nested", [True, False], ids=["parent", "batches-folder"])
def test_cifar10_reads_the_python_batches(tmp_path, nested):
    x, y, x_test, y_test = write_cifar10(tmp_path)
    root = tmp_path if nested else tmp_path / "cifar-10-batches-py"
    data = load_dataset("cifar10", root=str(root))
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64 and data.num_classes == 10
    assert data.y_train.tolist() == y.tolist() and data.y_test.tolist() == [9, 0, 4]  # batches 1..5 in order
    # a row is the red, green, blue planes, each row-major: byte 1024 + 32 * 2 + 5 is green at row 2, column 5
    norm = (x[0, 1024 + 32 * 2 + 5] / 255 - 0.4734) / 0.2516
    assert data.x_train[0, 1, 2, 5] == pytest.approx(norm, abs=1e-6)
    expected = (x.reshape(15, 3, 32, 32) / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
    np.testing.assert_allclose(data.x_train, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(data.x_test, (x_test.reshape(3, 3, 32, 32) / 255.0 - 0.4734) / 0.2516, atol=1e-6)


def test_cifar10_missing_or_bad_files_are_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    spec = DATASETS.get("cifar10")
    problem = spec.check_root(str(tmp_path))
    assert "data_batch_3 not found" in problem and "cifar-10-batches-py" in problem
    with pytest.raises(DatasetError, match="data_batch_3 not found"):
        load_dataset("cifar10", root=str(tmp_path))
    assert "no default location; set data.root" in spec.check_root("")
    assert f"cifar10: directory {tmp_path / 'nowhere'} not found" in spec.check_root(str(tmp_path / "nowhere"))
    # wrong row length, labels out of range
    write_batch(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8),
                                                                   b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"data_batch_3: b'data' must be uint8 of shape \(N, 3072\)"):
        load_dataset("cifar10", root=str(tmp_path))
    write_batch(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8),
                                                                   b"labels": [0, 10]})
    with pytest.raises(DatasetError, match=r"b'labels' must be in 0..9, got 0..10"):
        load_dataset("cifar10", root=str(tmp_path))


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_batches_cannot_run_code(tmp_path):
    """A pickle that would call a function (here os.getcwd) is refused: the unpickler builds arrays only."""
    write_cifar10(tmp_path)
    write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": _Payload(), b"labels": []})
    with pytest.raises(DatasetError, match=r"test_batch: not a CIFAR python batch: refusing posix.getcwd"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    x, fine, coarse = write_cifar100(tmp_path)
    data = load_dataset("cifar100", root=str(tmp_path))
    assert data.num_classes == 100 and data.y_train.tolist() == fine.tolist() and data.y_test.tolist() == [1, 2]
    np.testing.assert_allclose(data.x_train, (x.reshape(6, 3, 32, 32) / 255.0 - 0.4782) / 0.2682, atol=1e-6)
    data = load_dataset("cifar100", root=str(tmp_path / "cifar-100-python"), params={"cifar100_labels": "coarse"})
    assert data.num_classes == 20 and data.y_train.tolist() == coarse.tolist() and data.y_test.tolist() == [3, 4]
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetError, match=r"cifar100: meta not found"):
        load_dataset("cifar100", root=str(tmp_path))


# --- EMNIST --------------------------------------------------------------------------------------------------------


def test_emnist_images_come_back_upright(tmp_path):
    upright = write_emnist(tmp_path / "gzip", "balanced", [0, 46, 7, 3])  # NIST's gzip.zip unpacks to gzip/
    data = load_dataset("emnist", root=str(tmp_path))
    assert data.x_train.shape == (4, 1, 28, 28) and data.x_test.shape == (2, 1, 28, 28) and data.num_classes == 47
    assert data.y_train.tolist() == [0, 46, 7, 3] and data.y_test.tolist() == [0, 46]
    np.testing.assert_allclose(data.x_train[:, 0], upright / 255.0, rtol=0, atol=1e-7)
    # the file holds the transpose: stored[r, c] is the upright pixel at [c, r]
    assert not np.allclose(data.x_train[0, 0], data.x_train[0, 0].T)
    assert data.x_train[1, 0, 3, 20] == pytest.approx(upright[1, 3, 20] / 255)


@pytest.mark.parametrize(("split", "labels", "expected", "classes"), [
    ("letters", [1, 26, 13], [0, 25, 12], 26),  # the files label letters 1..26
    ("digits", [9, 0, 5], [9, 0, 5], 10),
    ("byclass", [61, 0, 36], [61, 0, 36], 62),
])
def test_emnist_splits(tmp_path, split, labels, expected, classes):
    write_emnist(tmp_path, split, labels, gz=split != "digits")  # uncompressed names are found too
    data = load_dataset("emnist", root=str(tmp_path), params={"emnist_split": split})
    assert data.y_train.tolist() == expected and data.num_classes == classes
    spec = DATASETS.get("emnist")
    assert spec.resolve(spec.Params(emnist_split=split)).num_classes == classes


def test_emnist_errors_name_the_files_and_labels(tmp_path):
    write_emnist(tmp_path, "balanced", [0, 1, 2])
    problem = DATASETS.get("emnist").check_root(str(tmp_path), DATASETS.get("emnist").Params(emnist_split="digits"))
    assert "emnist-digits-train-images-idx3-ubyte" in problem and "emnist_split='digits'" in problem
    write_emnist(tmp_path, "letters", [0, 1, 2])  # letters start at 1
    with pytest.raises(DatasetError, match=r"expected N labels in 1..26 \(split 'letters'\)"):
        load_dataset("emnist", root=str(tmp_path), params={"emnist_split": "letters"})
    with pytest.raises(ConfigError, match="data.emnist_split='kanji'"):
        load_dataset("emnist", root=str(tmp_path), params={"emnist_split": "kanji"})


# --- FEMNIST -------------------------------------------------------------------------------------------------------


def test_femnist_natural_split_is_one_writer_per_client(tmp_path):
    writers = write_femnist(tmp_path)
    names = list(writers)
    data = load_dataset("femnist", root=str(tmp_path), num_clients=3, seed=0)
    assert data.num_classes == 62 and data.input_shape == (1, 28, 28) and data.x_train.dtype == np.float32
    # LEAF's split_data.py: each writer keeps max(1, int(0.9 n)): 9 of 10, 3 of 4, 5 of 6
    assert [p.size for p in data.natural_partition] == [9, 3, 5] and len(data.y_test) == 1 + 1 + 1
    # files in number order (all_data_2 before all_data_10), writers in each file's order
    for client, name in enumerate(names):
        x, y = writers[name]
        mine = data.natural_partition[client]
        rows = {xi.tobytes(): yi for xi, yi in zip(x, y, strict=True)}  # each of the writer's samples, by pixels
        for i in mine:
            assert rows[data.x_train[i, 0].tobytes()] == data.y_train[i]
    parts = partition_indices(data.y_train, kind="natural", num_clients=3, seed=0, natural=data.natural_partition)
    assert [p.tolist() for p in parts] == [list(range(0, 9)), list(range(9, 12)), list(range(12, 17))]
    # seeded: the same seed holds out the same samples, another seed others
    again = load_dataset("femnist", root=str(tmp_path), num_clients=3, seed=0)
    other = load_dataset("femnist", root=str(tmp_path), num_clients=3, seed=5)
    assert np.array_equal(again.x_test, data.x_test) and not np.array_equal(other.x_test, data.x_test)
    # two writers: the first two; invert gives 1 - x
    two = load_dataset("femnist", root=str(tmp_path), num_clients=2, params={"femnist_invert": True})
    assert len(two.natural_partition) == 2 and two.y_train.size == 12
    np.testing.assert_allclose(two.x_train, 1 - data.x_train[:12], atol=1e-7)


def test_femnist_agrees_with_flwr_natural_id_partitioner(tmp_path):
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner

    write_femnist(tmp_path)
    data = load_dataset("femnist", root=str(tmp_path), num_clients=3)
    writer = np.empty(data.y_train.size, np.int64)
    for client, part in enumerate(data.natural_partition):
        writer[part] = client
    partitioner = NaturalIdPartitioner(partition_by="writer")
    partitioner.dataset = datasets.Dataset.from_dict({"writer": writer, "idx": np.arange(writer.size)})
    theirs = [sorted(partitioner.load_partition(i)["idx"]) for i in range(partitioner.num_partitions)]
    assert theirs == [p.tolist() for p in data.natural_partition]


def test_femnist_leaf_train_test_split_and_errors(tmp_path):
    writers = write_femnist(tmp_path / "all")
    names = list(writers)
    for folder, cut in (("train", slice(0, -1)), ("test", slice(-1, None))):
        (tmp_path / "leaf" / folder).mkdir(parents=True)
        part = {n: (writers[n][0][cut], writers[n][1][cut]) for n in names}
        name = f"all_data_0_niid_0_keep_0_{folder}_9.json"  # LEAF's split_data.py names
        (tmp_path / "leaf" / folder / name).write_text(json.dumps(leaf_file(part)))
    data = load_dataset("femnist", root=str(tmp_path / "leaf"), num_clients=2)
    assert [p.size for p in data.natural_partition] == [9, 3] and data.y_test.tolist() == [writers[n][1][-1]
                                                                                           for n in names[:2]]
    with pytest.raises(DatasetError, match=r"holds 3 writers, 5 asked for"):
        load_dataset("femnist", root=str(tmp_path / "all"), num_clients=5)
    with pytest.raises(DatasetError, match=r"no LEAF JSON files.*all_data_\*\.json"):
        load_dataset("femnist", root=str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "all_data_0.json").write_text(json.dumps({"users": ["u"], "num_samples": [2],
                                                     "user_data": {"u": {"x": [[0.5] * 784], "y": [1]}}}))
    with pytest.raises(DatasetError, match=r"writer 'u': num_samples says 2, got x \(1, 784\)"):
        load_dataset("femnist", root=str(bad), num_clients=1)


# --- plans over the files ------------------------------------------------------------------------------------------


def plan(dataset: str, root: Path, *, model: str = "logreg", **data: object):
    return plan_from_dict({"rounds": 1, "data": {"dataset": dataset, "root": str(root), "num_clients": 3,
                                                 "partition": "iid", **data},
                           "model": {"name": model}, "train": {"clients_per_round": 3}})


def test_plans_validate_against_the_files(tmp_path):
    write_cifar10(tmp_path / "c10")
    write_emnist(tmp_path / "em", "digits", [1, 2, 3])
    write_femnist(tmp_path / "fem")
    assert plan("cifar10", tmp_path / "c10", model="cnn_cifar").dataset.input_shape == (3, 32, 32)
    assert plan("cifar10", tmp_path / "c10", model="resnet20_gn").facts.dataset.num_classes == 10
    emnist = plan("emnist", tmp_path / "em", model="cnn_mcmahan", emnist_split="digits")
    assert (emnist.dataset.num_classes, emnist.dataset.train_size) == (10, 240_000)  # the split decides
    assert "emnist_split = \"digits\"" in emnist.to_toml()
    natural = plan("femnist", tmp_path / "fem", model="resnet20_gn", partition="natural")
    assert natural.dataset.natural and natural.dataset.num_classes == 62
    with pytest.raises(ConfigError, match=r"model.name='cnn_mcmahan': takes 1-channel \(grey\) images.*3-channel"):
        plan("cifar10", tmp_path / "c10", model="cnn_mcmahan")
    with pytest.raises(ConfigError, match=r"model.name='cnn_cifar': takes 3-channel"):
        plan("femnist", tmp_path / "fem", model="cnn_cifar")
    with pytest.raises(ConfigError, match=r"data.partition='natural': only 'femnist', 'synthetic' are naturally"):
        plan("cifar10", tmp_path / "c10", partition="natural")
    with pytest.raises(ConfigError, match=r"data.root: emnist \(emnist_split='balanced'\): emnist-balanced-train"):
        plan("emnist", tmp_path / "em")
    with pytest.raises(ConfigError, match=r"data.root: cifar100 has no default location"):
        plan_from_dict({"data": {"dataset": "cifar100"}})
    with pytest.raises(ConfigError, match=r"data.femnist_writers"):
        plan("femnist", tmp_path / "fem", femnist_writers=-1)


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.e2e
def test_tiny_cifar10_run_end_to_end(tmp_path):
    from fedsec.runtime.runner import run_experiment

    write_cifar10(tmp_path / "data")
    run = plan_from_dict({"name": "tiny-cifar", "seed": 0, "rounds": 1,
                          "data": {"dataset": "cifar10", "root": str(tmp_path / "data"), "num_clients": 4,
                                   "partition": "iid"},
                          "model": {"name": "cnn_cifar"},
                          "train": {"clients_per_round": 4, "batch_size": 4, "lr": 0.01},
                          "defense": {"strategy": "fedavg"}})
    result = run_experiment(run, tmp_path / "run")
    rounds = pd.read_csv(result.run_dir / "rounds.csv")
    clients = pd.read_csv(result.run_dir / "clients.csv")
    assert rounds["round"].tolist() == [0, 1] and rounds["accuracy"].between(0, 1).all()
    # 15 training images over 4 iid clients: 4, 4, 4, 3
    assert sorted(clients["num_examples"].tolist()) == [3, 4, 4, 4] and (clients["update_norm"] > 0).all()


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.e2e
def test_files_broken_after_validation_fail_the_run_with_their_name(tmp_path):
    """The data loads in a thread while Ray starts (fedsec/runtime/runner.py): its error still ends the run as a
    RunError naming the file, with nothing written but the run directory's start (its config)."""
    from fedsec.runtime.runner import RunError, run_experiment

    write_cifar10(tmp_path / "data")
    run = plan("cifar10", tmp_path / "data", model="cnn_cifar")  # validated against the files as they were
    write_batch(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8),
                                                                            b"labels": [0, 10]})
    with pytest.raises(RunError, match=r"data_batch_2: b'labels' must be in 0..9, got 0..10"):
        run_experiment(run, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.toml", "plots"]  # no rounds, no summary
