"""The fedsim client: a real Flower ``ClientApp`` (Message API) that trains and evaluates.

A client is identified by ``context.node_config["partition-id"]``, exactly as
under Flower's simulation engine, so the same app runs in fedsim's engine, in
Flower's ``run_simulation`` and in a real deployment. Everything a process
needs to serve clients (the memory-mapped client data store, the model on its
device) is built once per process and cached, not per message.

Local training follows the FedAU reference: plain SGD (optionally with
momentum and weight decay) over a per-client data stream that persists across
rounds. The stream's position lives in ``context.state`` (epoch, position), and
each epoch's order is drawn from ``seeding.rng(seed, "data-stream", client,
epoch)``, so it does not depend on which actor serves the client.

:func:`hooked` wraps any ClientApp (fedsim's or a user's) with the two things
the simulator itself needs from a node: answering "which partition are you?"
(Flower's engine assigns random node ids) and receiving the scenario's
``[client.config]`` as ``context.run_config``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import keys
from fedsim.arrays import array_to_numpy, numpy_to_array
from fedsim.client_data import ClientDataStore
from fedsim.models import build_model
from fedsim.seeding import rng

WHOAMI = "query.fedsim_whoami"


@dataclass(frozen=True)
class ClientSpec:
    """Everything the fedsim ClientApp needs, small and picklable (shipped to actors)."""

    data_dir: str
    model_spec: str  # JSON of the scenario's [model] table
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int
    source: str
    base_dir: str
    local_steps: int | None
    local_epochs: int | None
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    eval_batch_size: int
    device: str

    @classmethod
    def make(cls, *, model: dict[str, Any], **fields: Any) -> ClientSpec:
        return cls(model_spec=json.dumps(model, sort_keys=True), **fields)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Workspace:
    """Per-process cache: the data store and one model instance on the device."""

    def __init__(self, spec: ClientSpec) -> None:
        self.device = resolve_device(spec.device)
        self.store = ClientDataStore.open(Path(spec.data_dir))
        self.model = build_model(
            json.loads(spec.model_spec),
            input_shape=spec.input_shape,
            num_classes=spec.num_classes,
            seed=spec.seed,
            source=spec.source,
            base_dir=Path(spec.base_dir),
        ).to(self.device)


_WORKSPACES: dict[ClientSpec, _Workspace] = {}
_LAST: list[tuple[ClientSpec, _Workspace]] = []  # the last one used: found without hashing


def _workspace(spec: ClientSpec) -> _Workspace:
    if _LAST and _LAST[0][0] is spec:
        return _LAST[0][1]
    if spec not in _WORKSPACES:
        if not _WORKSPACES and not torch.cuda.is_available():
            # Measured on 2 cores: intra-op threads slow small-model training down.
            torch.set_num_threads(1)
        _WORKSPACES[spec] = _Workspace(spec)
    _LAST[:] = [(spec, _WORKSPACES[spec])]
    return _WORKSPACES[spec]


def stream_batches(
    num_examples: int,
    batch_size: int,
    num_steps: int,
    *,
    seed: int,
    client: int,
    epoch: int,
    position: int,
) -> tuple[list[np.ndarray], int, int]:
    """The next ``num_steps`` minibatches of a client's persistent data stream.

    Each epoch is one permutation of the client's examples, drawn from
    ``rng(seed, "data-stream", client, epoch)``; the last batch of an epoch may be
    short. Returns the batches and the stream's new (epoch, position).

    >>> batches, epoch, position = stream_batches(5, 2, 4, seed=0, client=0, epoch=0, position=0)
    >>> [len(b) for b in batches], epoch, position
    ([2, 2, 1, 2], 1, 2)
    """
    batches: list[np.ndarray] = []
    order = rng(seed, "data-stream", client, epoch).permutation(num_examples)
    for _ in range(num_steps):
        if position >= num_examples:
            epoch, position = epoch + 1, 0
            order = rng(seed, "data-stream", client, epoch).permutation(num_examples)
        batches.append(order[position : position + batch_size])
        position += batch_size
    return batches, epoch, position


def _client_id(context: Context) -> int:
    return int(context.node_config[keys.PARTITION_ID])


def _arrays(message: Message) -> ArrayRecord:
    return message.content.array_records[keys.ARRAYS]


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
def _numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
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
        dtype = _numpy_dtype(tensor.dtype)
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
        views[name].dtype == _numpy_dtype(tensor.dtype) for name, tensor in state.items()
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
        and all(_numpy_dtype(t.dtype) is not None for t in tensors)
    ):
        arrays = staged_numpy(tensors)
    else:
        arrays = [tensor.detach().cpu().numpy() for tensor in tensors]
    record = ArrayRecord()  # filled in place: ArrayRecord(dict) would copy every Array
    for name, array in zip(state, arrays, strict=True):
        record[name] = numpy_to_array(array)
    return record


def round_batches(
    client: int,
    num_examples: int,
    epoch: int,
    position: int,
    *,
    local_steps: int | None,
    local_epochs: int | None,
    batch_size: int,
    seed: int,
) -> tuple[list[np.ndarray], int, int]:
    """This round's minibatches of ``client`` given its stream state (epoch, position).

    ``local_steps`` continues the stream where the last round left it; otherwise a round
    is ``local_epochs`` fresh epochs. Returns the batches and the new state.

    >>> batches, epoch, position = round_batches(
    ...     0, 5, 0, 1, local_steps=None, local_epochs=1, batch_size=2, seed=0)
    >>> [len(b) for b in batches], epoch, position
    ([2, 2, 1], 1, 6)
    """
    if local_steps is not None:
        num_steps = local_steps
    else:
        num_steps = (local_epochs or 1) * math.ceil(num_examples / batch_size)
        if position:
            epoch, position = epoch + 1, 0
    if not num_examples:
        return [], epoch, position
    return stream_batches(
        num_examples,
        batch_size,
        num_steps,
        seed=seed,
        client=client,
        epoch=epoch,
        position=position,
    )


def local_sgd(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    batches: list[np.ndarray],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
) -> np.ndarray:
    """SGD over ``batches`` (index arrays into ``x``, ``y``); returns the float64 step losses.

    The client's data and every batch's indices go to the device once, and the losses
    stay there until the end, so a GPU never waits for the host inside the loop.
    """
    if not batches:
        return np.zeros(0)
    x_all = torch.from_numpy(np.array(x)).to(device)
    y_all = torch.from_numpy(np.array(y)).to(device)
    order = torch.from_numpy(np.concatenate(batches)).to(device)
    bounds = np.cumsum([0] + [len(batch) for batch in batches]).tolist()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    model.train()
    losses = []
    for start, end in itertools.pairwise(bounds):
        index = order[start:end]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x_all[index]), y_all[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).cpu().numpy().astype(np.float64)


def train(spec: ClientSpec, message: Message, context: Context) -> Message:
    """Local SGD from the received global model; replies the new model and metrics."""
    work = _workspace(spec)
    client = _client_id(context)
    model = work.model
    load_arrays(model, _arrays(message))
    x_np, y_np = work.store.train(client)
    num_examples = len(y_np)
    stream = context.state.config_records.get(keys.STREAM_STATE, ConfigRecord())
    epoch, position = int(stream.get("epoch", 0)), int(stream.get("position", 0))  # type: ignore[arg-type]
    batches, epoch, position = round_batches(
        client,
        num_examples,
        epoch,
        position,
        local_steps=spec.local_steps,
        local_epochs=spec.local_epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
    )
    losses = local_sgd(
        model,
        x_np,
        y_np,
        batches,
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        device=work.device,
    )
    context.state.config_records[keys.STREAM_STATE] = ConfigRecord(
        {"epoch": epoch, "position": position}
    )
    reply = RecordDict(
        {
            keys.ARRAYS: state_to_record(model),
            keys.METRICS: MetricRecord(
                {
                    keys.NUM_EXAMPLES: num_examples,
                    keys.TRAIN_LOSS: float(np.mean(losses)) if len(losses) else 0.0,
                }
            ),
        }
    )
    return Message(reply, reply_to=message)


@torch.no_grad()
def evaluate_arrays(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(np.array(x[start : start + batch_size])).to(device)
        yb = torch.from_numpy(np.array(y[start : start + batch_size])).to(device)
        logits = model(xb)
        total_loss += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    count = max(len(y), 1)
    return total_loss / count, correct / count


def evaluate(spec: ClientSpec, message: Message, context: Context) -> Message:
    """Evaluate the received model on the client's local test split."""
    work = _workspace(spec)
    client = _client_id(context)
    load_arrays(work.model, _arrays(message))
    x, y = work.store.test(client)
    loss, accuracy = evaluate_arrays(
        work.model, x, y, device=work.device, batch_size=spec.eval_batch_size
    )
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: len(y), keys.EVAL_LOSS: loss, keys.EVAL_ACCURACY: accuracy}
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)


def make_client_app(spec: ClientSpec) -> ClientApp:
    """fedsim's ClientApp for one scenario."""
    app = ClientApp()

    @app.train()
    def _train(message: Message, context: Context) -> Message:
        return train(spec, message, context)

    @app.evaluate()
    def _evaluate(message: Message, context: Context) -> Message:
        return evaluate(spec, message, context)

    return app


class HookedClientApp(ClientApp):
    """Any ClientApp, plus the partition-id query and the scenario's run config."""

    def __init__(self, inner: ClientApp, run_config: dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        self.run_config = dict(run_config)

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type == WHOAMI:
            record = MetricRecord({keys.PARTITION_ID: _client_id(context)})
            return Message(RecordDict({keys.METRICS: record}), reply_to=message)
        context.run_config.update(self.run_config)
        return self.inner(message, context)
