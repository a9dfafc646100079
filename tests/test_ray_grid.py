"""fedsim's Ray engine runs Flower's stock strategies and ClientApps unchanged.

Several messages for one actor travel in one Ray call; that keeps the engine's
semantics: replies in order, each message with its own content and context, a failure
an error reply for that message.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.engine.identity import node_id_of
from fedsim.engine.ray_grid import RayGrid

# A ClientApp that adds (partition id + 1) to every array, counts its calls in
# context.state, and raises for partition 3.
toy_app = ClientApp()


@toy_app.train()
def _train(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    if partition == 3:
        raise RuntimeError("partition 3 always fails")
    calls = context.state.config_records.get("calls", ConfigRecord({"n": 0}))
    context.state.config_records["calls"] = ConfigRecord({"n": int(calls["n"]) + 1})
    arrays = message.content["arrays"]
    new = ArrayRecord({k: Array(arrays[k].numpy() + partition + 1) for k in arrays})
    metrics = MetricRecord({"num-examples": 1, "calls": int(calls["n"]) + 1})
    return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=message)


@pytest.fixture
def grid(ray_session: None):
    grid = RayGrid(toy_app, num_clients=5, num_actors=2)
    yield grid
    grid.shutdown()


def start_message(node: int) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))}), "config": ConfigRecord()}
    )
    return Message(content, node, "train")


def test_replies_in_order_with_failures_as_error_replies(grid: RayGrid) -> None:
    nodes = [node_id_of(c) for c in (4, 0, 3, 2)]
    replies = list(grid.send_and_receive([start_message(n) for n in nodes]))
    assert [r.metadata.src_node_id for r in replies] == nodes
    assert [r.has_error() for r in replies] == [False, False, True, False]
    assert "partition 3 always fails" in replies[2].error.reason
    assert replies[0].content["arrays"]["w"].numpy().tolist() == [5.0, 5.0]


def test_context_state_persists_across_rounds_whichever_actor(grid: RayGrid) -> None:
    for expected in (1, 2, 3):
        replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in (0, 1, 2)]))
        assert [int(r.content["metrics"]["calls"]) for r in replies] == [expected] * 3


def test_flower_fedavg_start_runs_unchanged(grid: RayGrid) -> None:
    strategy = FlowerFedAvg(fraction_evaluate=0.0, min_available_nodes=5, min_train_nodes=5)
    initial = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=2)
    # Partitions 0, 1, 2, 4 succeed each round (3 raises): mean increment (1+2+3+5)/4 = 2.75
    assert result.arrays["w"].numpy().tolist() == pytest.approx([5.5, 5.5])


def test_dead_actor_is_replaced(grid: RayGrid) -> None:
    import ray

    first_box = grid._mailboxes[0]
    assert first_box is not None and first_box.path.exists()
    ray.kill(grid.actors[0], no_restart=True)
    replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in (0, 1, 2, 4)]))
    errors = [r for r in replies if r.has_error()]
    assert len(replies) == 4 and len(errors) == 1
    assert all("actor died" in r.error.reason for r in errors)
    replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in (0, 1, 2, 4)]))
    assert not any(r.has_error() for r in replies)
    # The replacement has a mailbox of its own; the dead actor's file is gone.
    assert not first_box.path.exists()
    assert grid._mailboxes[0] is not None and grid._mailboxes[0].path.exists()


# --- the mailbox: calls through shared memory on the driver's machine --------------------


def test_on_one_machine_calls_go_through_mailboxes_removed_at_shutdown(
    ray_session: None,
) -> None:
    grid = RayGrid(toy_app, num_clients=5, num_actors=2)
    paths = [box.path for box in grid._mailboxes if box is not None]
    try:
        assert len(paths) == 2 and all(path.exists() for path in paths)
        replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in (4, 0, 1)]))
        assert [r.content["arrays"]["w"].numpy().tolist() for r in replies] == [
            [5.0] * 2,
            [1.0] * 2,
            [2.0] * 2,
        ]
    finally:
        grid.shutdown()
    assert not any(path.exists() for path in paths)


def test_an_actor_that_cannot_open_its_mailbox_is_served_through_ray(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a cluster, where the actor runs on another machine than the driver's file."""
    from fedsim.engine.mailbox import Mailbox

    create = Mailbox.create

    def elsewhere() -> Mailbox:
        box = create()
        box.path.unlink()  # the actor will not find it
        return box

    monkeypatch.setattr(Mailbox, "create", staticmethod(elsewhere))
    grid = RayGrid(toy_app, num_clients=5, num_actors=1)
    try:
        assert grid._mailboxes == [None]
        for expected in (1, 2):
            replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in (0, 3, 2)]))
            assert [r.has_error() for r in replies] == [False, True, False]
            assert [int(replies[i].content["metrics"]["calls"]) for i in (0, 2)] == [expected] * 2
            assert replies[2].content["arrays"]["w"].numpy().tolist() == [3.0, 3.0]
    finally:
        grid.shutdown()


# --- batched dispatch: several messages per Ray call ------------------------------------

# A ClientApp that adds (partition + 1 + earlier calls) to every array, mutates the content it
# receives (each message must have its own), and kills its worker for partition 3.
batch_app = ClientApp()


@batch_app.train()
def _batch_train(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    if partition == 3:
        os._exit(1)
    record = context.state.config_records.get("calls", ConfigRecord({"n": 0}))
    calls = int(record["n"])  # type: ignore[arg-type]
    context.state.config_records["calls"] = ConfigRecord({"n": calls + 1})
    arrays = message.content.array_records["arrays"]
    new = ArrayRecord({k: Array(arrays[k].numpy() + partition + 1 + calls) for k in arrays})
    # A careless app: the next message must not see this.
    message.content.array_records["arrays"] = ArrayRecord()
    reply = RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 1})})
    return Message(reply, reply_to=message)


def first(reply: Message) -> float:
    return float(reply.content.array_records["arrays"]["w"].numpy()[0])


@pytest.mark.slow
def test_batched_dispatch_keeps_the_engines_semantics(ray_session: None) -> None:
    grid = RayGrid(batch_app, num_clients=6, num_actors=1)
    try:
        content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
        healthy = [node_id_of(c) for c in (5, 0, 2, 4)]
        replies = list(grid.send_and_receive([Message(content, n, "train") for n in healthy]))
        assert [r.metadata.src_node_id for r in replies] == healthy
        assert [first(r) for r in replies] == [6.0, 1.0, 3.0, 5.0]
        assert grid.stats["calls"] == 1 and grid.stats["messages"] == 4  # one call, 4 messages
        # Partition 3 kills the actor in the middle of a batch: the batch runs again one
        # message per call, and only partition 3 is answered with the error.
        nodes = [node_id_of(c) for c in (5, 0, 3, 2, 4)]
        replies = list(grid.send_and_receive([Message(content, n, "train") for n in nodes]))
        assert [r.metadata.src_node_id for r in replies] == nodes
        assert [r.has_error() for r in replies] == [False, False, True, False, False]
        assert "actor died" in str(replies[2].error.reason)
        got = [first(r) for r in replies if not r.has_error()]
        assert got == [7.0, 2.0, 4.0, 6.0]  # each context counted one earlier call, not two
        assert grid.stats["calls"] == 1 + 1 + 5 and grid.stats["messages"] == 4 + 5 + 5
    finally:
        grid.shutdown()


def test_a_call_the_mailbox_has_no_room_for_goes_through_ray(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.engine.mailbox import Mailbox

    grid = RayGrid(toy_app, num_clients=5, num_actors=1)
    try:
        assert grid._mailboxes[0] is not None

        def full(self: Mailbox, obj: object) -> list[tuple[int, int]]:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Mailbox, "pack", full)  # the driver's side: /dev/shm is full
        replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in (1, 3)]))
        assert [r.has_error() for r in replies] == [False, True]
        assert replies[0].content["arrays"]["w"].numpy().tolist() == [2.0, 2.0]
        assert grid._mailboxes[0] is not None  # kept for the next call
    finally:
        grid.shutdown()


# --- calls per actor: one cohort each when the app trains cohorts --------------------------


def cohort_reply(message: Message, size: int) -> Message:
    metrics = MetricRecord({"num-examples": 1, "cohort": size})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


class CohortToy(ClientApp):
    """Replies with the size of the cohort that served the message (1: one at a time)."""

    serves_cohorts = True

    def __init__(self) -> None:
        super().__init__()

        @self.train()
        def _train(message: Message, context: Context) -> Message:
            return cohort_reply(message, 1)

    def cohort_limit(
        self, message_type: str, *, max_clients: int | None, memory_mb: float | None
    ) -> tuple[int, str | None]:
        return 100, None

    def serve_cohort(self, messages: list[Message], contexts: list[Context]) -> list[Message]:
        return [cohort_reply(message, len(messages)) for message in messages]


cohort_toy = CohortToy()


@pytest.mark.parametrize(("mode", "calls", "sizes"), [("auto", 2, [5] * 10), ("off", 4, [1] * 10)])
def test_with_cohorts_each_actor_gets_one_call_a_round(
    ray_session: None, mode: str, calls: int, sizes: list[int]
) -> None:
    from fedsim.engine.serving import CohortPolicy

    grid = RayGrid(cohort_toy, num_clients=10, num_actors=2, cohort=CohortPolicy(mode))
    try:
        replies = list(grid.send_and_receive([start_message(node_id_of(c)) for c in range(10)]))
        assert [int(r.content["metrics"]["cohort"]) for r in replies] == sizes
        assert grid.stats["calls"] == calls
    finally:
        grid.shutdown()
