"""The fast ``Array`` conversions (``fedsim.arrays``) give Flower's bytes and arrays exactly,
and fall back where they must.

:func:`~fedsim.arrays.numpy_to_array` writes the ``.npy`` bytes without ``np.save``'s
per-call header work and :func:`~fedsim.arrays.array_to_numpy` reads them as a view
without parsing; fedsim's ClientApp loads and records models through them
(``fedsim.client.device``). What a strategy or a Flower deployment sees must not change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsim.arrays import array_to_numpy, numpy_to_array
from fedsim.client.device import load_arrays, state_to_record


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(3.5, dtype=np.float64),
        np.arange(5, dtype=np.int64),
        np.zeros((0, 3), dtype=np.float16),
        np.ones((2, 3, 4), dtype=np.uint8),
    ],
)
def test_fast_array_conversions_match_flowers(array: np.ndarray) -> None:
    fast, flower = numpy_to_array(array), Array(array)
    assert (fast.data, fast.dtype, tuple(fast.shape)) == (flower.data, flower.dtype, flower.shape)
    view = array_to_numpy(flower)
    assert view.dtype == array.dtype and view.shape == array.shape
    np.testing.assert_array_equal(view, array)


def test_fast_array_conversions_fall_back_where_they_must() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert numpy_to_array(fortran).data == Array(fortran).data  # np.save's own layout
    np.testing.assert_array_equal(array_to_numpy(Array(fortran)), fortran)
    model = torch.nn.Linear(3, 2)
    record = state_to_record(model)
    assert list(record.keys()) == ["weight", "bias"]
    target = torch.nn.Linear(3, 2)
    load_arrays(target, record)
    assert torch.equal(target.weight, model.weight) and torch.equal(target.bias, model.bias)
    wrong = ArrayRecord({"weight": Array(np.zeros((3, 2), np.float32)), "bias": record["bias"]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_arrays(target, wrong)
