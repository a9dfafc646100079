"""The fedsim client: a real Flower ``ClientApp`` (Message API) that trains and evaluates.

A client is identified by ``context.node_config["partition-id"]``, exactly as
under Flower's simulation engine, so the same app runs in fedsim's engine, in
Flower's simulation runtime and in a real deployment. Everything a process
needs to serve clients (the memory-mapped client data store, the model on its
device) is built once per process and cached, not per message.

Local training is :mod:`fedsim.client.training`'s: plain SGD over a per-client data
stream that persists across rounds. The stream's position lives in
``context.state`` (epoch, position), and each epoch's order is drawn from
``seeding.rng(seed, "data-stream", client, epoch)``, so it does not depend on
which actor serves the client.

Cohorts: an engine worker that holds several train (or evaluate) messages for
this app asks :meth:`FedsimClientApp.cohort_limit` how many it may hand over at
once and :meth:`FedsimClientApp.serve_cohort` trains them as one stacked model
(:func:`fedsim.client.training.cohort_sgd`); every message still gets its own reply,
and each node's Context its own stream position, exactly as one at a time. A
model that cannot be vectorised is reported once (the limit is 1, with the
reason) and served one message at a time.

:class:`HookedClientApp` wraps any ClientApp (fedsim's or a user's) with the two things
the simulator itself needs from a node: answering "which partition are you?"
(Flower's engine assigns random node ids) and receiving the scenario's
``[client.config]`` as ``context.run_config``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedsim import keys
from fedsim.arrays import Block, array_to_numpy, numpy_to_array, rows_to_records
from fedsim.client.device import (
    device_to_host,
    host_to_device,
    load_arrays,
    numpy_dtype,
    resolve_device,
    state_to_record,
)
from fedsim.client.training import (
    CohortSteps,
    Stacked,
    cohort_bytes_per_client,
    cohort_capacity,
    cohort_evaluate,
    cohort_sgd,
    evaluate_arrays,
    evaluation_batches,
    local_sgd,
    round_batches,
    slower_as_cohort,
    vectorisation_problem,
)
from fedsim.data.store import ClientDataStore
from fedsim.models import build_model
from fedsim.privacy.local import LocalPrivacy, privatise_reply

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
    # Intra-op threads of training on a CPU: the worker's CPUs (engine.num_cpus_per_client).
    cpu_threads: int = 1
    # A model factory a script passed as an object (shipped by value; None: by the table).
    model_factory: Any = None

    @classmethod
    def make(cls, *, model: dict[str, Any], **fields: Any) -> ClientSpec:
        factory = model.get("factory")
        if callable(factory):
            table = {k: v for k, v in model.items() if k != "factory"}
            table["factory"] = "<object>"
            return cls(
                model_spec=json.dumps(table, sort_keys=True), model_factory=factory, **fields
            )
        return cls(model_spec=json.dumps(model, sort_keys=True), **fields)

    def model_table(self) -> dict[str, Any]:
        table = json.loads(self.model_spec)
        if self.model_factory is not None:
            table["factory"] = self.model_factory
        return dict(table)


class _Workspace:
    """Per-process cache: the data store and one model instance on the device."""

    def __init__(self, spec: ClientSpec) -> None:
        self.device = resolve_device(spec.device)
        self.store = ClientDataStore.open(Path(spec.data_dir))
        self.model = build_model(
            spec.model_table(),
            input_shape=spec.input_shape,
            num_classes=spec.num_classes,
            seed=spec.seed,
            source=spec.source,
            base_dir=Path(spec.base_dir),
        ).to(self.device)
        self.spec = spec
        self._bytes_per_client: dict[str, int] = {}
        self._resident: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray] | None] = {}

    def _example(self, batch_size: int) -> torch.Tensor:
        return torch.zeros((batch_size, *self.spec.input_shape), device=self.device)

    @functools.cached_property
    def cohort_problem(self) -> str | None:
        """Why this model cannot be trained as a cohort (None: it can); checked once."""
        odd = [t.dtype for t in self.model.state_dict().values() if numpy_dtype(t.dtype) is None]
        if odd:
            return f"{odd[0]} tensors have no numpy dtype to stack on the host"
        return vectorisation_problem(self.model, self._example(2))

    @functools.cached_property
    def default_budget_mb(self) -> float:
        """The cohort memory budget without ``engine.cohort_memory_mb``, fixed when first
        needed so that every round plans the same cohorts."""
        return default_cohort_memory_mb(self.device)

    def cohort_size(
        self, message_type: str, max_clients: int | None, memory_mb: float | None
    ) -> int:
        """The most messages of ``message_type`` one cohort may hold."""
        if message_type not in self._bytes_per_client:
            batch = (
                self.spec.batch_size
                if message_type == MessageType.TRAIN
                else self.spec.eval_batch_size
            )
            self._bytes_per_client[message_type] = cohort_bytes_per_client(
                self.model, self._example(batch)
            )
        budget = memory_mb if memory_mb is not None else self.default_budget_mb
        return cohort_capacity(self._bytes_per_client[message_type], budget, max_clients)

    def rows(self, split: str, clients: list[int]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The inputs and labels of ``clients`` on the device, and where each client's rows
        start. On an accelerator a split that fits a quarter of the free memory is copied
        there once and kept; otherwise the clients' rows are gathered per cohort."""
        x_all, y_all, offsets = self.store.split(split)
        if split not in self._resident:
            self._resident[split] = None
            if self.device.type == "cuda":
                free = torch.cuda.mem_get_info(self.device)[0]
                if x_all.nbytes + y_all.nbytes <= free // 4:
                    x, y = host_to_device([x_all, y_all], self.device)
                    self._resident[split] = (x, y, offsets)
        resident = self._resident[split]
        if resident is not None:
            return resident[0], resident[1], resident[2][clients]
        parts = [(int(offsets[c]), int(offsets[c + 1])) for c in clients]
        sizes = np.array([end - start for start, end in parts], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        x_np = np.concatenate([x_all[a:b] for a, b in parts]) if parts else x_all[:0]
        y_np = np.concatenate([y_all[a:b] for a, b in parts]) if parts else y_all[:0]
        x, y = host_to_device([x_np, y_np], self.device)
        return x, y, starts

    def stacked_state(self, records: list[ArrayRecord]) -> Stacked:
        """The messages' models stacked along a leading client dimension, on the device.

        A record that several messages share (a round's global model, usually) is
        copied to the device once and repeated there. Raises ValueError when a record
        does not match the model (the one-at-a-time path then answers each message
        with its own error)."""
        state = self.model.state_dict()
        position: dict[int, int] = {}  # id of a record -> its index in unique
        unique: list[ArrayRecord] = []
        for record in records:
            if id(record) not in position:
                if record.keys() != state.keys():
                    raise ValueError("arrays do not match the model's state_dict")
                position[id(record)] = len(unique)
                unique.append(record)
        views = []
        for name, tensor in state.items():
            rows = [array_to_numpy(record[name]) for record in unique]
            for row in rows:
                if row.shape != tuple(tensor.shape):
                    raise ValueError(f"{name}: shape {row.shape}, model {tuple(tensor.shape)}")
            views.append(np.stack(rows).astype(numpy_dtype(tensor.dtype), copy=False))
        loaded = host_to_device(views, self.device)
        if len(unique) < len(records):
            which = torch.tensor([position[id(r)] for r in records], device=self.device)
            loaded = [tensor.index_select(0, which) for tensor in loaded]
        return dict(zip(state, loaded, strict=True))

    @staticmethod
    def records(state: Stacked) -> list[ArrayRecord]:
        """One ArrayRecord per client of a stacked state (the arrays state_to_record gives).

        A float32 model comes back as one ``(clients, parameters)`` block left on the
        device (:class:`~fedsim.arrays.Block`), each reply's arrays slices of its row
        (:class:`~fedsim.arrays.RowArray`: no bytes, and no transfer from an
        accelerator, until someone reads them; fedsim's aggregation reads the rows
        where they are)."""
        tensors = [tensor.detach() for tensor in state.values()]
        count = tensors[0].shape[0] if tensors else 0
        if tensors and all(tensor.dtype == torch.float32 for tensor in tensors):
            block = torch.cat([tensor.reshape(count, -1) for tensor in tensors], dim=1)
            shapes = [tuple(tensor.shape[1:]) for tensor in tensors]
            return rows_to_records(Block(block), list(state), shapes)
        host = device_to_host(tensors)
        out = []
        for k in range(count):
            record = ArrayRecord()  # filled in place: ArrayRecord(dict) would copy every Array
            for name, array in zip(state, host, strict=True):
                record[name] = numpy_to_array(np.ascontiguousarray(array[k]))
            out.append(record)
        return out


# The CPU's cohort memory budget when engine.cohort_memory_mb is not set; on CUDA, half of
# the memory free when the first cohort is planned.
CPU_COHORT_MEMORY_MB = 2048.0


def default_cohort_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2 / (1 << 20)
    return CPU_COHORT_MEMORY_MB


_WORKSPACES: dict[ClientSpec, _Workspace] = {}
_LAST: list[tuple[ClientSpec, _Workspace]] = []  # the last one used: found without hashing


def _workspace(spec: ClientSpec) -> _Workspace:
    if _LAST and _LAST[0][0] is spec:
        return _LAST[0][1]
    if spec not in _WORKSPACES:
        workspace = _Workspace(spec)
        if not _WORKSPACES and workspace.device.type == "cpu":
            # As many threads as the worker has CPUs (one per Ray actor by default): a
            # cohort's stacked operations use them (1.7x faster on 2 threads than on
            # one, 50 MLP clients), where one small model alone gains little.
            torch.set_num_threads(spec.cpu_threads)
        _WORKSPACES[spec] = workspace
    _LAST[:] = [(spec, _WORKSPACES[spec])]
    return _WORKSPACES[spec]


def _client_id(context: Context) -> int:
    return int(context.node_config[keys.PARTITION_ID])


def _arrays(message: Message) -> ArrayRecord:
    record = message.content[keys.ARRAYS]
    if not isinstance(record, ArrayRecord):
        raise KeyError(keys.ARRAYS)
    return record


def _stream(context: Context) -> tuple[int, int]:
    """The node's data stream position (epoch, position) kept in its Context."""
    stream = context.state.get(keys.STREAM_STATE)
    if not isinstance(stream, ConfigRecord):
        return 0, 0
    return int(stream.get("epoch", 0)), int(stream.get("position", 0))  # type: ignore[arg-type]


def _set_stream(context: Context, epoch: int, position: int) -> None:
    context.state[keys.STREAM_STATE] = ConfigRecord({"epoch": epoch, "position": position})


def _round_batches(
    spec: ClientSpec, client: int, num_examples: int, context: Context
) -> tuple[list[np.ndarray], int, int]:
    """This round's batches of ``client`` and its stream's position after them."""
    epoch, position = _stream(context)
    return round_batches(
        client,
        num_examples,
        epoch,
        position,
        local_steps=spec.local_steps,
        local_epochs=spec.local_epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
    )


def _train_reply(
    message: Message, arrays: ArrayRecord, num_examples: int, losses: np.ndarray
) -> Message:
    reply = RecordDict(
        {
            keys.ARRAYS: arrays,
            keys.METRICS: MetricRecord(
                {
                    keys.NUM_EXAMPLES: num_examples,
                    keys.TRAIN_LOSS: float(np.mean(losses)) if len(losses) else 0.0,
                }
            ),
        }
    )
    return Message(reply, reply_to=message)


def _evaluate_reply(message: Message, num_examples: int, loss: float, accuracy: float) -> Message:
    metrics = MetricRecord(
        {keys.NUM_EXAMPLES: num_examples, keys.EVAL_LOSS: loss, keys.EVAL_ACCURACY: accuracy}
    )
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=message)


def train(spec: ClientSpec, message: Message, context: Context) -> Message:
    """Local SGD from the received global model; replies the new model and metrics."""
    work = _workspace(spec)
    client = _client_id(context)
    load_arrays(work.model, _arrays(message))
    x_np, y_np = work.store.train(client)
    batches, epoch, position = _round_batches(spec, client, len(y_np), context)
    losses = local_sgd(
        work.model,
        x_np,
        y_np,
        batches,
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        device=work.device,
    )
    _set_stream(context, epoch, position)
    return _train_reply(message, state_to_record(work.model), len(y_np), losses)


def train_cohort(
    spec: ClientSpec, messages: list[Message], contexts: list[Context]
) -> list[Message]:
    """:func:`train` for several nodes at once, as one stacked model; the same replies
    (up to float32 rounding) and the same stream positions as one at a time."""
    work = _workspace(spec)
    clients = [_client_id(context) for context in contexts]
    state = work.stacked_state([_arrays(message) for message in messages])
    sizes = work.store.num_train_examples()[clients]
    plans = [
        _round_batches(spec, client, int(size), context)
        for client, size, context in zip(clients, sizes, contexts, strict=True)
    ]
    x, y, starts = work.rows("train", clients)
    steps = CohortSteps.of([plan[0] for plan in plans], starts.tolist())
    losses = cohort_sgd(
        work.model,
        state,
        x,
        y,
        steps,
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
    )
    replies = []
    for k, record in enumerate(work.records(state)):
        _set_stream(contexts[k], plans[k][1], plans[k][2])
        client_losses = losses[steps.active[:, k], k]
        replies.append(_train_reply(messages[k], record, int(sizes[k]), client_losses))
    return replies


def evaluate(spec: ClientSpec, message: Message, context: Context) -> Message:
    """Evaluate the received model on the client's local test split."""
    work = _workspace(spec)
    client = _client_id(context)
    load_arrays(work.model, _arrays(message))
    x, y = work.store.test(client)
    loss, accuracy = evaluate_arrays(
        work.model, x, y, device=work.device, batch_size=spec.eval_batch_size
    )
    return _evaluate_reply(message, len(y), loss, accuracy)


def evaluate_cohort(
    spec: ClientSpec, messages: list[Message], contexts: list[Context]
) -> list[Message]:
    """:func:`evaluate` for several nodes at once, as one stacked model."""
    work = _workspace(spec)
    clients = [_client_id(context) for context in contexts]
    state = work.stacked_state([_arrays(message) for message in messages])
    sizes = work.store.num_test_examples()[clients]
    x, y, starts = work.rows("test", clients)
    batches = [evaluation_batches(int(size), spec.eval_batch_size) for size in sizes]
    total, correct = cohort_evaluate(
        work.model, state, x, y, CohortSteps.of(batches, starts.tolist())
    )
    counts = np.maximum(sizes, 1)
    return [
        _evaluate_reply(message, int(size), float(t / n), float(c / n))
        for message, size, t, c, n in zip(messages, sizes, total, correct, counts, strict=True)
    ]


class FedsimClientApp(ClientApp):
    """fedsim's ClientApp for one scenario; an engine worker may also hand it cohorts.

    >>> # app = FedsimClientApp(spec)
    >>> # limit, reason = app.cohort_limit("train", max_clients=None, memory_mb=None)
    >>> # replies = app.serve_cohort(messages[:limit], contexts[:limit])
    """

    serves_cohorts = True  # whether serve_cohort is there (this app's model may still refuse)

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__()
        self.spec = spec

        @self.train()
        def _train(message: Message, context: Context) -> Message:
            return train(spec, message, context)

        @self.evaluate()
        def _evaluate(message: Message, context: Context) -> Message:
            return evaluate(spec, message, context)

    def cohort_limit(
        self, message_type: str, *, max_clients: int | None, memory_mb: float | None
    ) -> tuple[int, str | None]:
        """How many messages of ``message_type`` one cohort may hold, and why only one
        when the model cannot be vectorised (None otherwise)."""
        if message_type not in (MessageType.TRAIN, MessageType.EVALUATE):
            return 1, None
        work = _workspace(self.spec)
        problem = work.cohort_problem
        if problem is None and max_clients is None:
            problem = slower_as_cohort(work.model, work.device)
        if problem is not None:
            return 1, problem
        return work.cohort_size(message_type, max_clients, memory_mb), None

    def serve_cohort(self, messages: list[Message], contexts: list[Context]) -> list[Message]:
        """Replies to ``messages`` (all train or all evaluate, distinct nodes)."""
        if messages[0].metadata.message_type == MessageType.TRAIN:
            return train_cohort(self.spec, messages, contexts)
        return evaluate_cohort(self.spec, messages, contexts)


def make_client_app(spec: ClientSpec) -> FedsimClientApp:
    """fedsim's ClientApp for one scenario."""
    return FedsimClientApp(spec)


class HookedClientApp(ClientApp):
    """Any ClientApp, plus the partition-id query, the scenario's run config and, with
    local differential privacy, each training reply clipped and noised before it leaves
    (:mod:`fedsim.privacy.local`; the one-message and the cohort path alike)."""

    def __init__(
        self,
        inner: ClientApp,
        run_config: dict[str, Any],
        local_privacy: LocalPrivacy | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.run_config = dict(run_config)
        self.local_privacy = local_privacy

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type == WHOAMI:
            record = MetricRecord({keys.PARTITION_ID: _client_id(context)})
            return Message(RecordDict({keys.METRICS: record}), reply_to=message)
        context.run_config.update(self.run_config)
        reply: Message = self.inner(message, context)
        self._privatise(message, reply, context)
        return reply

    def _privatise(self, message: Message, reply: Message, context: Context) -> None:
        if self.local_privacy is not None and message.metadata.message_type == MessageType.TRAIN:
            privatise_reply(message, reply, _client_id(context), self.local_privacy)

    @property
    def serves_cohorts(self) -> bool:
        """Whether the inner app takes cohorts (fedsim's own does, a user's does not)."""
        return bool(getattr(self.inner, "serves_cohorts", False))

    def cohort_limit(
        self, message_type: str, *, max_clients: int | None, memory_mb: float | None
    ) -> tuple[int, str | None]:
        """The inner app's cohort limit; 1 for an app that serves one message at a time."""
        inner = getattr(self.inner, "cohort_limit", None)
        if inner is None or message_type == WHOAMI:
            return 1, None
        limit: tuple[int, str | None] = inner(
            message_type, max_clients=max_clients, memory_mb=memory_mb
        )
        return limit

    def serve_cohort(self, messages: list[Message], contexts: list[Context]) -> list[Message]:
        for context in contexts:
            context.run_config.update(self.run_config)
        replies: list[Message] = self.inner.serve_cohort(messages, contexts)  # type: ignore[attr-defined]
        if self.local_privacy is not None:
            asked = {m.metadata.message_id: (m, c) for m, c in zip(messages, contexts, strict=True)}
            for reply in replies:
                message, context = asked[reply.metadata.reply_to_message_id]
                self._privatise(message, reply, context)
        return replies
