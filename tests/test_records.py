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


def test_npy_layout_reads_numpys_headers_once_each_and_refuses_what_is_not_a_plain_array():
    import io

    from fedsec.arrays import _parse_npy_header, npy_layout

    def npy(value, version=None) -> bytes:
        buffer = io.BytesIO()
        if version is None:
            np.save(buffer, value, allow_pickle=True)
        else:
            np.lib.format.write_array(buffer, value, version=version, allow_pickle=True)
        return buffer.getvalue()

    for value in (np.zeros((3, 4), dtype=np.float32), np.arange(5, dtype=np.int64), np.float64(2.5)):
        for version in (None, (1, 0), (2, 0)):
            data = npy(value, version)
            shape, dtype, offset = npy_layout(data)
            assert (shape, dtype) == (np.shape(value), np.asarray(value).dtype)
            assert np.array_equal(np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape), value)
    _parse_npy_header.cache_clear()
    data = npy(np.ones((2, 2), dtype=np.float32))
    for _ in range(3):
        npy_layout(data)
    assert _parse_npy_header.cache_info().misses == 1  # one parse for the same header, however many replies
    refused = [b"", b"not a npy file at all", data[:9], data[:20],  # empty, no magic, cut inside the header
               npy(np.asfortranarray(np.ones((2, 3)))), npy(np.array([object()], dtype=object)),
               data[:6] + bytes([9, 0]) + data[8:]]  # an unknown format version
    for bad in refused:
        assert npy_layout(bad) is None, bad[:12]
