"""ArrayRecord <-> flat tensors: the zero-copy reader agrees with Flower's own deserialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsec.arrays import array_view, record_to_vector, stack_records, vector_to_record


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(3, 2)),  # falls back to Array.numpy()
        np.array(3.5, dtype=np.float32),
        np.zeros((0, 3), dtype=np.float32),
        np.arange(5, dtype=np.int64),
    ],
)
def test_array_view_equals_flowers_numpy(values):
    array = Array(values)
    view = array_view(array)
    assert view.shape == values.shape and view.dtype == values.dtype
    np.testing.assert_array_equal(view, array.numpy())


def test_stack_and_round_trip():
    like = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(3, np.float32))})
    records = [ArrayRecord({"w": Array(np.full((2, 2), i, np.float32)), "b": Array(np.arange(3, dtype=np.float32))})
               for i in range(3)]
    stacked = stack_records(records)
    assert stacked.shape == (3, 7)
    torch.testing.assert_close(stacked[2], torch.tensor([2.0, 2, 2, 2, 0, 1, 2]))
    back = vector_to_record(record_to_vector(records[1]), like=like)
    np.testing.assert_array_equal(back["w"].numpy(), np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(back["b"].numpy(), np.arange(3, dtype=np.float32))
