"""Moving model arrays between the host and a client's device (``fedsim.client.device``):
a staged copy moves every tensor whole, whatever its dtype and shape, empty and 0-d ones
included.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsim.client.device import staged_load, staged_numpy


def test_staged_copies_move_every_tensor_whole() -> None:
    tensors = [
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
        torch.tensor(7, dtype=torch.int64),
        torch.zeros(0, dtype=torch.float16),
        torch.arange(5, dtype=torch.float64),
    ]
    copies = staged_numpy(tensors)
    for tensor, copy in zip(tensors, copies, strict=True):
        assert copy.dtype == tensor.numpy().dtype and copy.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(copy, tensor.numpy())
    sources = [np.full(tuple(t.shape), 3, dtype=t.numpy().dtype) for t in tensors]
    staged_load(tensors, sources)
    assert tensors[0].eq(3).all() and int(tensors[1]) == 3 and tensors[3].eq(3).all()
