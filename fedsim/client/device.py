"""Where a client's tensors live: picking the device, and moving model arrays between the
host and that device.

A model travels in Flower messages as host arrays; on an accelerator, copying it tensor by
tensor costs one transfer each, which dominates small models. Here a whole model (or a
whole cohort of stacked models) goes through one reusable host buffer (pinned when CUDA is
there) in one transfer each way.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.arrays import array_to_numpy, numpy_to_array


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_ALIGN = 64  # byte alignment of each tensor in a staging buffer


def _layout(tensors: list[torch.Tensor]) -> tuple[list[int], int]:
    """Aligned byte offsets of ``tensors`` packed one after the other, and the total."""
    offsets, total = [], 0
    for tensor in tensors:
        offsets.append(total)
        total += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
    return offsets, total


class _Staging:
    """One host buffer per process (pinned when CUDA is there), reused for every copy
    between the host and an accelerator: one transfer per model instead of one per tensor."""

    buffer: torch.Tensor | None = None

    @classmethod
    def host(cls, nbytes: int) -> torch.Tensor:
        if cls.buffer is None or cls.buffer.numel() < nbytes:
            pin = torch.cuda.is_available()
            cls.buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pin)
        return cls.buffer[:nbytes]


@functools.cache
def numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    """The numpy dtype of a torch dtype (None where numpy has none, e.g. bfloat16)."""
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        return None


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1).view(torch.uint8)


def staged_load(tensors: list[torch.Tensor], views: list[np.ndarray]) -> None:
    """Copy host arrays into same-dtype (device) tensors through one staging transfer."""
    offsets, total = _layout(tensors)
    device = tensors[0].device
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # the buffer's last copy is done
    host = _Staging.host(total)
    host_np = host.numpy()
    for offset, view in zip(offsets, views, strict=True):
        raw = np.ascontiguousarray(view).reshape(-1).view(np.uint8)
        host_np[offset : offset + raw.size] = raw
    staged = host.to(device, non_blocking=True)
    for offset, tensor in zip(offsets, tensors, strict=True):
        size = tensor.numel() * tensor.element_size()
        tensor.copy_(staged[offset : offset + size].view(tensor.dtype).view(tensor.shape))


def staged_numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Host copies of (device) tensors through one staging transfer (valid until the next)."""
    offsets, total = _layout(tensors)
    packed = torch.zeros(total, dtype=torch.uint8, device=tensors[0].device)
    for offset, tensor in zip(offsets, tensors, strict=True):
        raw = _bytes_of(tensor)
        packed[offset : offset + raw.numel()] = raw
    host = _Staging.host(total)
    host.copy_(packed, non_blocking=True)
    if packed.device.type == "cuda":
        torch.cuda.current_stream(packed.device).synchronize()
    host_np = host.numpy()
    out = []
    for offset, tensor in zip(offsets, tensors, strict=True):
        dtype = numpy_dtype(tensor.dtype)
        assert dtype is not None
        size = tensor.numel() * tensor.element_size()
        out.append(host_np[offset : offset + size].view(dtype).reshape(tuple(tensor.shape)))
    return out


@torch.no_grad()
def load_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Copy ``arrays`` into ``model``'s parameters and buffers, where they already live.

    As strict as ``load_state_dict`` (which reports any mismatch of names or shapes). On
    an accelerator the whole model travels in one transfer.
    """
    state = model.state_dict()
    views = {name: array_to_numpy(arrays[name]) for name in arrays}
    if views.keys() != state.keys() or any(
        views[name].shape != tuple(tensor.shape) for name, tensor in state.items()
    ):
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in views.items()})
        return
    tensors = list(state.values())
    if all(tensor.device.type == "cpu" for tensor in tensors):
        for name, tensor in state.items():
            np.copyto(tensor.numpy(), views[name], casting="unsafe")
    elif len({t.device for t in tensors}) == 1 and all(
        views[name].dtype == numpy_dtype(tensor.dtype) for name, tensor in state.items()
    ):
        staged_load(tensors, [views[name] for name in state])
    else:
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(np.array(views[name])))


def state_to_record(model: torch.nn.Module) -> ArrayRecord:
    """The model's ``state_dict`` as an ``ArrayRecord`` (what ``ArrayRecord(state_dict)`` is);
    from an accelerator in one transfer."""
    state = model.state_dict()
    tensors = list(state.values())
    if (
        tensors
        and len({t.device for t in tensors}) == 1
        and tensors[0].device.type != "cpu"
        and all(numpy_dtype(t.dtype) is not None for t in tensors)
    ):
        arrays = staged_numpy(tensors)
    else:
        arrays = [tensor.detach().cpu().numpy() for tensor in tensors]
    record = ArrayRecord()  # filled in place: ArrayRecord(dict) would copy every Array
    for name, array in zip(state, arrays, strict=True):
        record[name] = numpy_to_array(array)
    return record


def host_to_device(views: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """New tensors on ``device`` holding ``views`` (in one transfer on an accelerator)."""
    if device.type == "cpu":
        return [torch.from_numpy(np.array(view)) for view in views]
    tensors = [
        torch.empty(view.shape, dtype=torch.from_numpy(view[:0].copy()).dtype, device=device)
        for view in views
    ]
    staged_load(tensors, views)
    return tensors


def device_to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Host arrays of ``tensors``; from an accelerator in one transfer, and then valid only
    until the next staging transfer of this process (copy what must outlive it)."""
    if not tensors or tensors[0].device.type == "cpu":
        return [tensor.detach().numpy() for tensor in tensors]
    return staged_numpy([tensor.detach() for tensor in tensors])
