"""Simulated time: a device and network model per client, and the virtual clock.

Time in fedsim is simulated, not measured. The ``[system]`` table gives every
client a device (compute speed in examples per second) and a network (download
and upload bandwidth in Mbit/s, a per-round latency in seconds), drawn once per
client from the scenario's streams or read from a per-client CSV
(:mod:`fedsim.system.profile`). Each client-round then lasts

    download (bytes received · 8 / download bandwidth)
    + compute (examples processed / speed)
    + upload (bytes replied · 8 / upload bandwidth)
    + latency,

from the real sizes of the messages, and a synchronous round lasts until its
last awaited reply, its ``keep_first``-th reply (over-selection) or its deadline
(:mod:`fedsim.system.clock`). Without a ``[system]`` table none of this exists
and a run is unchanged.
"""

from __future__ import annotations

from fedsim.options import parse_duration
from fedsim.system.clock import ClientTime, RoundClose, VirtualClock, close_round, payload_bytes
from fedsim.system.profile import (
    SYSTEM_KEYS,
    DeviceProfiles,
    SystemModel,
    build_system,
)

__all__ = [
    "SYSTEM_KEYS",
    "ClientTime",
    "DeviceProfiles",
    "RoundClose",
    "SystemModel",
    "VirtualClock",
    "build_system",
    "close_round",
    "parse_duration",
    "payload_bytes",
]
