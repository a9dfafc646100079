"""Local differential privacy: a client clips and noises its own update before sending it.

The server then never sees an update that was not privatised, whatever it does
with it. :func:`privatise_reply` is applied to every training reply by the
client-side wrapper of any ClientApp (:class:`fedsim.client.app.HookedClientApp`),
on the one-message path and on the cohort path alike, so cohort training needs
no special case. The noise of client c in round t comes from the stream
(seed, "privacy-local", c, t): a resumed run draws the same noise.

Each report is a Gaussian mechanism on the client's clipped update with noise
std σ·C. Two updates of norm at most C differ by at most 2C, so against any
other update the client could have sent it is a Gaussian mechanism with noise
multiplier σ/2 (:mod:`fedsim.privacy.accounting` accounts it so, with q = 1:
the server sees who sends, so sampling does not hide anyone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedsim import keys
from fedsim.arrays import Layout
from fedsim.privacy.mechanism import clip, gaussian_noise
from fedsim.seeding import rng

LOCAL_PURPOSE = "privacy-local"


@dataclass(frozen=True)
class LocalPrivacy:
    """What a client needs to privatise its replies: C, σ and the scenario seed."""

    clip_norm: float
    noise_multiplier: float
    seed: int


def _arrays(content: RecordDict) -> tuple[str, ArrayRecord] | None:
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            return name, record
    return None


def server_round(message: Message) -> int:
    """The round a train message belongs to (its config's ``server-round``; 0 if absent)."""
    for record in message.content.values():
        if isinstance(record, ConfigRecord) and keys.SERVER_ROUND in record:
            value = record[keys.SERVER_ROUND]
            if isinstance(value, int):
                return value
    return 0


def privatise_reply(message: Message, reply: Message, client: int, local: LocalPrivacy) -> None:
    """Replace ``reply``'s arrays by the sent arrays + clip(update) + N(0, (σC)²), in place.

    A reply with an error, or either side without arrays, is left as it is.
    """
    if reply.has_error():
        return
    sent, received = _arrays(message.content), _arrays(reply.content)
    if sent is None or received is None:
        return
    layout = Layout.of(sent[1])
    origin = layout.flatten(sent[1]).double().numpy()
    update = layout.flatten(received[1]).double().numpy() - origin
    clipped, _ = clip(update, local.clip_norm)
    generator = rng(local.seed, LOCAL_PURPOSE, client, server_round(message))
    noisy = clipped + gaussian_noise(
        update.size, local.noise_multiplier * local.clip_norm, generator
    )
    record = layout.to_record(torch.from_numpy(origin + noisy))
    name = received[0]
    reply.content = RecordDict(
        {key: record if key == name else value for key, value in reply.content.items()}
    )
