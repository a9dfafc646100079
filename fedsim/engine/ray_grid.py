"""fedsim's engine: Flower's ``Grid`` over a pool of long-lived Ray actors.

The strategy pushes messages; the grid hands each to an idle actor together
with that node's ``Context`` (partition id, persistent state), collects the
reply and the updated context, and returns the replies in the order the
messages were sent, so aggregation order, and therefore the model, does not
depend on which actor finished first. Nothing polls: the driver blocks in
``ray.wait``. A message's content is put in Ray's object store once however
many nodes it goes to.

Failure policy: a ClientApp that raises yields a Flower error reply; an actor
that dies yields an error reply for the message it held and is replaced; a
message still running at the timeout yields no reply (Flower's semantics) and
its actor is replaced so that the next round starts clean.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import ray
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim import keys
from fedsim.engine.actor import ClientActor, error_reply
from fedsim.engine.identity import node_id_of, set_identity


class RayGrid(Grid):
    """A Flower Grid whose nodes are served by ``num_actors`` Ray actors.

    >>> # grid = RayGrid(app, num_clients=10, num_actors=2)
    >>> # replies = grid.send_and_receive(strategy.configure_train(1, arrays, cfg, grid))
    """

    def __init__(
        self,
        app: ClientApp,
        *,
        num_clients: int,
        num_actors: int,
        num_cpus_per_actor: float = 1.0,
        num_gpus_per_actor: float = 0.0,
        run_id: int = 1,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self._run = Run.create_empty(run_id)
        self.num_clients = num_clients
        self._app_ref = ray.put(app)
        self._actor_options = {"num_cpus": num_cpus_per_actor, "num_gpus": num_gpus_per_actor}
        self._cpu_threads = None if num_gpus_per_actor > 0 else max(1, int(num_cpus_per_actor))
        self._run_config = dict(run_config or {})
        self.contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._pending: dict[str, Message] = {}
        self.actors = [self._new_actor() for _ in range(num_actors)]
        ray.get([actor.ready.remote() for actor in self.actors])
        set_identity(run_id)

    def _new_actor(self) -> Any:
        return ClientActor.options(**self._actor_options).remote(  # type: ignore[attr-defined]
            self._app_ref, self._cpu_threads
        )

    # --- Grid interface -------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [node_id_of(client) for client in range(self.num_clients)]

    def client_of(self, node_id: int) -> int:
        return node_id - node_id_of(0)

    def context(self, node_id: int) -> Context:
        """The node's Context, created on first use (idle nodes cost nothing)."""
        if node_id not in self.contexts:
            client = self.client_of(node_id)
            if not 0 <= client < self.num_clients:
                raise ValueError(f"unknown node id {node_id}")
            self.contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config={keys.PARTITION_ID: client, keys.NUM_PARTITIONS: self.num_clients},
                state=RecordDict(),
                run_config=dict(self._run_config),
            )
        return self.contexts[node_id]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Runs whatever is pending, then returns the replies to ``message_ids``."""
        if self._pending:
            self._dispatch(list(self._pending.values()), timeout=None)
            self._pending.clear()
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        message_list = list(messages)
        ids = list(self.push_messages(message_list))
        self._pending.clear()
        self._dispatch(message_list, timeout=timeout)
        return [self._replies.pop(i) for i in ids if i in self._replies]

    # --- scheduling -----------------------------------------------------------

    def _dispatch(self, messages: list[Message], *, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        content_refs: dict[int, ray.ObjectRef] = {}
        queue = list(reversed(messages))
        idle = list(range(len(self.actors)))
        running: dict[ray.ObjectRef, tuple[int, Message]] = {}
        while queue or running:
            while queue and idle:
                message = queue.pop()
                actor_index = idle.pop()
                key = id(message.content)
                if key not in content_refs:
                    content_refs[key] = ray.put(message.content)
                future = self.actors[actor_index].run.remote(
                    content_refs[key],
                    message.metadata,
                    self.context(message.metadata.dst_node_id),
                )
                running[future] = (actor_index, message)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=left)
            if not done:  # timeout: unanswered messages get no reply, as in Flower
                for future, (actor_index, _) in running.items():
                    ray.cancel(future, force=True)
                    self._replace_actor(actor_index)
                return
            for future in done:
                actor_index, message = running.pop(future)
                try:
                    reply, context = ray.get(future)
                    self.contexts[message.metadata.dst_node_id] = context
                except ray.exceptions.RayActorError as error:
                    reply = error_reply(message, f"actor died: {error}", ErrorCode.NODE_UNAVAILABLE)
                    self._replace_actor(actor_index)
                self._replies[message.metadata.message_id] = reply
                idle.append(actor_index)

    def _replace_actor(self, index: int) -> None:
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._new_actor()

    def shutdown(self) -> None:
        """Stop the actors (the Ray runtime itself is left to its owner)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
