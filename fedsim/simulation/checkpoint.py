"""Checkpoints: what a run needs to go on after a crash, a ``kill -9`` or Ctrl-C.

A run directory holds at most one checkpoint, ``checkpoint.zip``, replaced
atomically (temporary file + rename) every ``[checkpoint] every`` rounds and
when a run is interrupted, so a kill at any instant leaves the previous
complete checkpoint or the new one. It holds everything that changes from
round to round; everything else is rebuilt from the run's ``scenario.toml``
and its ``client_data`` store, which a run is deterministic in:

- the last round done and the global model (name → array, in order);
- the strategy's state: ``state_dict()`` when the strategy has one (fedsim's
  strategies), else its attributes (Flower's ``FedAdam`` keeps m_t and v_t
  there; attributes holding module-level functions, such as its metric
  aggregation function, are recorded by name and must match the rebuilt
  strategy's);
- every node's Flower ``Context`` (``Context.state`` holds a client's
  data-stream position);
- every row of results so far (metrics, participation, events);
- the driver's random states (Python, NumPy's legacy global, torch's CPU
  generator); fedsim draws nothing from them, but a user's plugin might;
- the scenario's origin (its file and folder, so that relative plugin, trace
  and topology paths still resolve) and the server's proxy set, if any, so
  that a resumed run need not load the data set again.

The file carries no code. It is a zip archive of:

- ``checkpoint.json``: the format name and version, scalars, strings and the
  shape of every nested value (dicts, lists, tuples) as a tree whose leaves
  are JSON values or references to the members below;
- ``data/N.npy``: NumPy arrays and scalars and torch tensors (read with
  ``allow_pickle=False``);
- ``flower/N.pb``: Flower ``Context`` objects and records (``ArrayRecord``,
  ``ConfigRecord``, ``MetricRecord``, ``RecordDict``) in Flower's own protobuf
  serialisation.

A strategy whose state is not such data (an attribute holding a generator, a
lambda, an object of its own class) is not checkpointed: the run records a
``checkpoint_failed`` event and goes on. A researcher who trusts the plugin can
opt in to pickling its state with ``[checkpoint] allow_pickle = true``; the
checkpoint then holds one more member, ``strategy.pkl``, and ``fedsim resume``
refuses it unless told ``--allow-pickle`` (a run directory from someone else
could hold a crafted pickle, and reading a scenario key from that same
directory would be no consent). Nothing else is ever unpickled: a
``checkpoint.pkl`` of an older fedsim, or a foreign or tampered file, is a
one-line error.

Rows of later rounds already flushed to the tables are discarded on resume, so
a resumed run's results equal an uninterrupted run's (timing rows aside).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import sys
import tempfile
import types
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord
from flwr.proto.recorddict_pb2 import ConfigRecord as ProtoConfigRecord
from flwr.proto.recorddict_pb2 import MetricRecord as ProtoMetricRecord
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedsim.errors import FedsimError
from fedsim.errors import RunInterrupted as RunInterrupted  # raised by the sessions
from fedsim.results import SCENARIO_FILE, SUMMARY_FILE

CHECKPOINT_FILE = "checkpoint.zip"
OLD_CHECKPOINT_FILE = "checkpoint.pkl"  # fedsim's pickled checkpoints (format 1): never read
MANIFEST = "checkpoint.json"
PICKLE_MEMBER = "strategy.pkl"
FORMAT = "fedsim-checkpoint"
FORMAT_VERSION = 2
STATE_DICT = "state_dict"
ATTRIBUTES = "attributes"
ALLOW_PICKLE_KEY = "[checkpoint] allow_pickle = true"


class CheckpointError(FedsimError):
    """A checkpoint that cannot be read or restored (one line, naming the file)."""


class NotData(TypeError):
    """A value a checkpoint cannot hold as data (see :func:`encode_tree`)."""


@dataclass(frozen=True)
class FunctionRef:
    """A module-level function (or class) kept by its name, ``module:qualname``.

    A checkpoint never imports it: restoring compares the name with the function
    the rebuilt strategy already holds.
    """

    name: str


@dataclass
class StrategyState:
    """A strategy's state: its ``state_dict()`` or, lacking one, its attributes.

    ``value`` is data (see :func:`encode_tree`); ``pickled`` instead holds the
    cloudpickled value when the run opted in with ``[checkpoint] allow_pickle``.
    """

    kind: str  # STATE_DICT or ATTRIBUTES
    value: Any = None
    pickled: bytes | None = None


@dataclass
class Checkpoint:
    """Everything that changes between rounds (see the module docstring)."""

    round: int
    arrays: dict[str, np.ndarray]
    strategy: StrategyState
    contexts: dict[int, Context]
    results: dict[str, list[Any]]
    source: str
    base_dir: str
    elapsed_s: float = 0.0
    proxy_data: tuple[np.ndarray, np.ndarray] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION


# --- the parts ------------------------------------------------------------------


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as name → NumPy array, in the record's order.

    >>> record = ArrayRecord({"w": Array(np.arange(3.0))})
    >>> arrays_to_numpy(record)["w"].tolist()
    [0.0, 1.0, 2.0]
    """
    return {name: arrays[name].numpy() for name in arrays}


def arrays_from_numpy(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """The inverse of :func:`arrays_to_numpy` (bit for bit).

    >>> record = arrays_from_numpy({"b": np.ones(2, np.float32), "a": np.zeros(1)})
    >>> list(record), record["b"].numpy().dtype.name
    (['b', 'a'], 'float32')
    """
    return ArrayRecord({name: Array(np.asarray(value)) for name, value in arrays.items()})


def _cloudpickle() -> Any:
    """The pickler of opted-in strategy states: cloudpickle (a fedsim dependency), which
    takes lambdas and classes defined in plugin files; Ray's bundled copy or plain pickle
    if it is missing."""
    try:
        import cloudpickle
    except ImportError:
        try:
            from ray import cloudpickle
        except ImportError:
            return pickle
    return cloudpickle


def function_name(value: Any) -> str | None:
    """``module:qualname`` of a module-level function or class that is reachable by that
    name in an already imported module; None for anything else (lambdas, closures).

    >>> function_name(json.dumps), function_name(lambda: 0)
    ('json:dumps', None)
    """
    if not isinstance(value, types.FunctionType | types.BuiltinFunctionType | type):
        return None
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is value else None


def strategy_state(strategy: Any, *, allow_pickle: bool = False) -> StrategyState:
    """The state of ``strategy``: ``state_dict()`` if it has one, else its attributes.

    Raises :class:`NotData` when that state is not data, unless ``allow_pickle``
    (the scenario's ``[checkpoint] allow_pickle``): then it is cloudpickled.

    >>> class Counter:
    ...     def __init__(self):
    ...         self.count = 0
    >>> counter = Counter(); counter.count = 3
    >>> state = strategy_state(counter); fresh = Counter(); restore_strategy(fresh, state)
    >>> state.kind, fresh.count
    ('attributes', 3)
    """
    name = type(strategy).__name__
    raw: Any
    if callable(getattr(strategy, "state_dict", None)):
        kind, raw = STATE_DICT, strategy.state_dict()
        value, where = raw, f"{name}.state_dict()"
    else:
        kind, raw = ATTRIBUTES, dict(vars(strategy))
        value = {key: _named_or_value(item) for key, item in raw.items()}
        where = name
    try:
        check_tree(value, where)
    except NotData as error:
        if not allow_pickle:
            advice = (
                f"give {name} state_dict()/load_state_dict() that return such data"
                if kind == ATTRIBUTES
                else f"make {name}.state_dict() return such data"
            )
            raise NotData(
                f"{error}; {advice}, or set {ALLOW_PICKLE_KEY} to pickle it "
                "(resume then needs: fedsim resume --allow-pickle)"
            ) from None
        return StrategyState(kind, pickled=_cloudpickle().dumps(raw))
    return StrategyState(kind, value)


def _named_or_value(value: Any) -> Any:
    name = function_name(value)
    return value if name is None else FunctionRef(name)


def restore_strategy(strategy: Any, state: StrategyState) -> None:
    """Put :func:`strategy_state`'s result back into a freshly built strategy."""
    value = pickle.loads(state.pickled) if state.pickled is not None else state.value
    name = type(strategy).__name__
    if state.kind == STATE_DICT:
        try:
            strategy.load_state_dict(value)
        except Exception as error:
            raise CheckpointError(
                f"checkpoint: the strategy state does not load into {name} "
                f"({type(error).__name__}: {_one_line(error)})"
            ) from error
    elif state.kind == ATTRIBUTES:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"checkpoint: {name}'s attributes are not a dict by name")
        attributes = vars(strategy)
        for key, item in value.items():
            if isinstance(item, FunctionRef):
                held = function_name(attributes.get(key))
                if held != item.name:
                    raise CheckpointError(
                        f"checkpoint: {name}.{key} was {item.name}, the rebuilt strategy "
                        f"holds {held or type(attributes.get(key)).__name__}"
                    )
            else:
                attributes[key] = item
    else:
        raise CheckpointError(f"checkpoint: unknown strategy state kind {state.kind!r}")


def rng_state() -> dict[str, Any]:
    """The driver's global random states (fedsim itself never draws from them)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set the states :func:`rng_state` returned."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.random.set_rng_state(state["torch"])


# --- data trees -------------------------------------------------------------------
#
# A tree is None, bool, int, float, str, bytes, a list, tuple or dict of trees (dict keys
# being trees that decode hashable), a NumPy array or scalar, a torch tensor, a
# Flower Context or record, or a FunctionRef. In JSON, lists stay lists and every
# other non-scalar is an object with one tag: {"tuple": [...]}, {"dict": {...}}
# (string keys), {"items": [[key, value], ...]} (other keys), {"ordered": [[key,
# value], ...]} (an OrderedDict, as torch's state_dict()), {"float": "nan"},
# {"bytes": member}, {"array": member}, {"scalar": member}, {"tensor": member, "dtype": name},
# {"flower": kind, "member": member}, {"function": "module:qualname"}.

_FLOWER: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any], type]] = {
    "Context": (Context, serde.context_to_proto, serde.context_from_proto, ProtoContext),
    "ArrayRecord": (
        ArrayRecord,
        serde.array_record_to_proto,
        serde.array_record_from_proto,
        ProtoArrayRecord,
    ),
    "ConfigRecord": (
        ConfigRecord,
        serde.config_record_to_proto,
        serde.config_record_from_proto,
        ProtoConfigRecord,
    ),
    "MetricRecord": (
        MetricRecord,
        serde.metric_record_to_proto,
        serde.metric_record_from_proto,
        ProtoMetricRecord,
    ),
    "RecordDict": (
        RecordDict,
        serde.recorddict_to_proto,
        serde.recorddict_from_proto,
        ProtoRecordDict,
    ),
}
_SCALARS = (type(None), bool, int, str)
_TAGS = {"tuple", "dict", "items", "ordered", "float", "function", "bytes", "array", "scalar"}
_TAGS |= {"tensor", "flower"}
_TAG_KEYS = {"tensor": {"tensor", "dtype", "view"}, "flower": {"flower", "member"}}
DATA_KINDS = (
    "dict/OrderedDict/list/tuple/str/bytes/int/float/bool/None, NumPy arrays and scalars, "
    "torch tensors, Flower Contexts and records"
)


def _flower_kind(value: Any) -> str | None:
    for kind, (cls, *_) in _FLOWER.items():
        if type(value) is cls:
            return kind
    return None


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def check_tree(value: Any, where: str = "value") -> None:
    """Raise :class:`NotData` naming the first part of ``value`` that is not data.

    >>> check_tree({"w": [np.zeros(2), (1, "a", None)]})
    >>> check_tree({"w": [1, {2, 3}]}, "state")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.simulation.checkpoint.NotData: state['w'][1] is a set, not data (a checkpoint holds ...
    """
    kind = type(value)
    if kind in _SCALARS or kind is float or kind is bytes or isinstance(value, FunctionRef):
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            check_tree(item, f"{where}[{index}]")
    elif kind is dict or kind is OrderedDict:
        for key, item in value.items():
            check_tree(key, f"{where} key {key!r}")
            check_tree(item, f"{where}[{key!r}]")
    elif isinstance(value, np.ndarray | np.generic):
        if value.dtype.hasobject:
            raise NotData(f"{where} is a NumPy array of Python objects, not data")
    elif isinstance(value, torch.Tensor) or _flower_kind(value) is not None:
        return
    else:
        raise NotData(
            f"{where} is a {_type_name(value)}, not data (a checkpoint holds {DATA_KINDS})"
        )


class _Writer:
    """Collects the binary members of one checkpoint while encoding its trees."""

    def __init__(self) -> None:
        self.members: dict[str, bytes] = {}

    def _add(self, folder: str, suffix: str, data: bytes) -> str:
        name = f"{folder}/{len(self.members)}{suffix}"
        self.members[name] = data
        return name

    def array(self, value: np.ndarray) -> str:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
        return self._add("data", ".npy", buffer.getvalue())

    def encode(self, value: Any, where: str = "value") -> Any:
        """``value`` as JSON-ready data, its arrays and records added as members."""
        kind = type(value)
        if kind in _SCALARS:
            return value
        if kind is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if kind is list:
            return [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if kind is tuple:
            return {"tuple": [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]}
        if kind is OrderedDict:  # torch's state_dict()
            return {
                "ordered": [
                    [self.encode(k, f"{where} key {k!r}"), self.encode(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ]
            }
        if kind is dict:
            if all(type(key) is str for key in value):
                return {"dict": {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
            return {
                "items": [
                    [self.encode(k, f"{where} key {k!r}"), self.encode(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ]
            }
        if isinstance(value, FunctionRef):
            return {"function": value.name}
        if kind is bytes:
            return {"bytes": self.array(np.frombuffer(value, np.uint8))}
        if isinstance(value, np.ndarray | np.generic):
            check_tree(value, where)
            tag = "array" if isinstance(value, np.ndarray) else "scalar"
            return {tag: self.array(np.asarray(value))}
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            dtype = str(tensor.dtype).removeprefix("torch.")
            try:
                array = tensor.numpy()
                view = False
            except TypeError:  # bfloat16 and kin: stored as integers of the same width
                bits = 8 * tensor.element_size()
                array = tensor.view(getattr(torch, f"int{bits}")).numpy()
                view = True
            encoded: dict[str, Any] = {"tensor": self.array(array), "dtype": dtype}
            if view:
                encoded["view"] = True
            return encoded
        flower = _flower_kind(value)
        if flower is not None:
            proto = _FLOWER[flower][1](value)
            return {"flower": flower, "member": self._add("flower", ".pb", _serialise(proto))}
        check_tree(value, where)  # raises NotData
        raise AssertionError(where)  # pragma: no cover


def _serialise(proto: Any) -> bytes:
    data: bytes = proto.SerializeToString(deterministic=True)
    return data


class _Reader:
    """Decodes trees from one checkpoint archive; every problem is a ValueError."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.names = set(archive.namelist())

    def _member(self, name: Any, folder: str, suffix: str) -> bytes:
        if not isinstance(name, str) or not name.startswith(f"{folder}/"):
            raise ValueError(f"bad member reference {name!r}")
        if not name.endswith(suffix) or name not in self.names:
            raise ValueError(f"no member {name!r}")
        return self.archive.read(name)

    def array(self, name: Any) -> np.ndarray:
        data = self._member(name, "data", ".npy")
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)

    def decode(self, value: Any) -> Any:
        if type(value) in (*_SCALARS, float):
            return value
        if type(value) is list:
            return [self.decode(item) for item in value]
        if type(value) is not dict or not value:
            raise ValueError(f"unexpected {type(value).__name__} in the tree")
        tags = set(value) & _TAGS
        if len(tags) != 1:
            raise ValueError(f"unexpected keys {sorted(value)} in the tree")
        tag = tags.pop()
        body = value[tag]
        if not set(value) <= _TAG_KEYS.get(tag, {tag}):
            raise ValueError(f"unexpected keys {sorted(value)} in the tree")
        if tag == "tuple" and type(body) is list:
            return tuple(self.decode(item) for item in body)
        if tag == "dict" and type(body) is dict:
            return {key: self.decode(item) for key, item in body.items()}
        if tag in ("items", "ordered") and type(body) is list:
            pairs = [self.decode(pair) for pair in body]
            if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
                raise ValueError("dict items are not [key, value] pairs")
            return OrderedDict(pairs) if tag == "ordered" else dict(pairs)
        if tag == "float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "function" and type(body) is str:
            return FunctionRef(body)
        if tag == "array":
            return self.array(body)
        if tag == "bytes":
            data = self.array(body)
            if data.dtype != np.uint8 or data.ndim != 1:
                raise ValueError(f"bytes member {body!r} is not a flat uint8 array")
            return data.tobytes()
        if tag == "scalar":
            scalar = self.array(body)
            if scalar.shape != ():
                raise ValueError(f"scalar member {body!r} has shape {scalar.shape}")
            return scalar[()]
        if tag == "tensor":
            dtype = getattr(torch, str(value.get("dtype")), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown tensor dtype {value.get('dtype')!r}")
            tensor = torch.from_numpy(np.array(self.array(body)))
            return tensor.view(dtype) if value.get("view") is True else tensor.to(dtype)
        if tag == "flower" and body in _FLOWER:
            _, _, from_proto, proto_class = _FLOWER[body]
            proto = proto_class()
            proto.ParseFromString(self._member(value.get("member"), "flower", ".pb"))
            return from_proto(proto)
        raise ValueError(f"unknown tag {tag!r} in the tree")


def encode_tree(value: Any) -> tuple[Any, dict[str, bytes]]:
    """``value`` as JSON-ready data plus the members (name → bytes) it refers to.

    Data is None, bool, int, float, str, bytes; lists, tuples, dicts and OrderedDicts
    of data (keys are data that decodes hashable: scalars, tuples); NumPy arrays (not
    of Python objects) and scalars; torch tensors (decoded on the CPU); Flower Contexts and
    records; :class:`FunctionRef`. Anything else raises :class:`NotData`.

    >>> tree, members = encode_tree({"w": np.arange(2), 3: (0.5, float("nan"))})
    >>> json.dumps(tree)
    '{"items": [["w", {"array": "data/0.npy"}], [3, {"tuple": [0.5, {"float": "nan"}]}]]}'
    >>> decode_tree(tree, members)["w"].tolist()
    [0, 1]
    """
    writer = _Writer()
    return writer.encode(value), writer.members


def decode_tree(tree: Any, members: dict[str, bytes]) -> Any:
    """The inverse of :func:`encode_tree` (bit for bit); ValueError for a bad tree."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with zipfile.ZipFile(buffer) as archive:
        return _Reader(archive).decode(tree)


# --- the file -----------------------------------------------------------------


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_FILE


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``run_dir`` atomically; returns the file's path."""
    writer = _Writer()
    strategy: dict[str, Any] = {"kind": checkpoint.strategy.kind}
    if checkpoint.strategy.pickled is not None:
        strategy["pickle"] = PICKLE_MEMBER
        writer.members[PICKLE_MEMBER] = checkpoint.strategy.pickled
    else:
        strategy["state"] = writer.encode(checkpoint.strategy.value, "strategy state")
    manifest = {
        "format": FORMAT,
        "version": checkpoint.version,
        "round": checkpoint.round,
        "elapsed_s": checkpoint.elapsed_s,
        "source": checkpoint.source,
        "base_dir": checkpoint.base_dir,
        "model": writer.encode(checkpoint.arrays, "model"),
        "strategy": strategy,
        "contexts": writer.encode(checkpoint.contexts, "contexts"),
        "results": writer.encode(checkpoint.results, "results"),
        "proxy_data": writer.encode(checkpoint.proxy_data, "proxy_data"),
        "rng": writer.encode(checkpoint.rng, "rng"),
    }
    text = json.dumps(manifest, allow_nan=False, separators=(",", ":"))
    path = checkpoint_path(run_dir)
    _atomic_zip(path, {MANIFEST: text.encode(), **writer.members})
    return path


def _atomic_zip(path: Path, members: dict[str, bytes]) -> None:
    """Write a zip of ``members`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, data in members.items():
                    archive.writestr(name, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: Path, *, allow_pickle: bool = False) -> Checkpoint:
    """The checkpoint of an unfinished run; a one-line FedsimError for anything else.

    Nothing is unpickled here; a checkpoint whose strategy state is a pickle
    (``[checkpoint] allow_pickle``) is refused unless ``allow_pickle``, and then
    unpickled by :func:`restore_strategy`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not (run_dir / SCENARIO_FILE).is_file():
        raise CheckpointError(f"{run_dir}: not a fedsim run directory (no {SCENARIO_FILE})")
    if (run_dir / SUMMARY_FILE).is_file():
        raise CheckpointError(f"{run_dir}: the run is complete ({SUMMARY_FILE}); nothing to resume")
    path = checkpoint_path(run_dir)
    if not path.is_file():
        old = run_dir / OLD_CHECKPOINT_FILE
        if old.is_file():
            raise CheckpointError(
                f"{old}: a checkpoint of an older fedsim, a pickle, which this fedsim never "
                f"opens (it could run code); the run cannot be resumed, start it again"
            )
        raise CheckpointError(
            f"{run_dir}: no {CHECKPOINT_FILE} to resume from (the run stopped before its "
            "first checkpoint, see [checkpoint] every); start it again"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
            if not zipfile.is_zipfile(handle):
                if head[:1] == b"\x80":  # PROTO: how every pickle of protocol 2+ starts
                    raise CheckpointError(
                        f"{path}: not a fedsim checkpoint (a pickle, which fedsim never opens)"
                    )
                raise CheckpointError(f"{path}: unreadable checkpoint (not a zip archive)")
            with zipfile.ZipFile(handle) as archive:
                return _read(archive, path, run_dir, allow_pickle)
    except CheckpointError:
        raise
    except Exception as error:  # a damaged file can fail in any step; none runs code
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({type(error).__name__}: {_one_line(error)})"
        ) from error


def _read(archive: zipfile.ZipFile, path: Path, run_dir: Path, allow_pickle: bool) -> Checkpoint:
    if MANIFEST not in archive.namelist():
        raise CheckpointError(f"{path}: not a fedsim checkpoint (no {MANIFEST})")
    manifest = json.loads(archive.read(MANIFEST))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fedsim checkpoint ({MANIFEST} of another format)")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version}, this fedsim reads {FORMAT_VERSION}"
        )
    reader = _Reader(archive)

    def part(key: str, *types_: type) -> Any:
        value = reader.decode(manifest.get(key))
        if not isinstance(value, types_) or type(value) is bool:
            names = " or ".join(t.__name__ for t in types_)
            raise ValueError(f"{key}: expected {names}, got {type(value).__name__}")
        return value

    arrays = part("model", dict)
    if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items()):
        raise ValueError("model: expected name → array")
    contexts = part("contexts", dict)
    if not all(type(k) is int and isinstance(v, Context) for k, v in contexts.items()):
        raise ValueError("contexts: expected node id → Context")
    results = part("results", dict)
    if not all(isinstance(rows, list) for rows in results.values()):
        raise ValueError("results: expected table → rows")
    proxy_data = part("proxy_data", tuple, type(None))
    if proxy_data is not None and (
        len(proxy_data) != 2 or not all(isinstance(a, np.ndarray) for a in proxy_data)
    ):
        raise ValueError("proxy_data: expected (x, y) arrays")
    rng = part("rng", dict)
    _check_rng(rng)
    strategy = manifest.get("strategy")
    if not isinstance(strategy, dict) or strategy.get("kind") not in (STATE_DICT, ATTRIBUTES):
        raise ValueError("strategy: expected a kind, state_dict or attributes")
    if "pickle" in strategy:
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: the strategy state is a pickle ({ALLOW_PICKLE_KEY}), and loading "
                "it runs code from the file; if you made this run yourself: "
                f"fedsim resume --allow-pickle {run_dir}"
            )
        state = StrategyState(strategy["kind"], pickled=archive.read(PICKLE_MEMBER))
    else:
        state = StrategyState(strategy["kind"], reader.decode(strategy.get("state")))
    return Checkpoint(
        round=part("round", int),
        arrays=arrays,
        strategy=state,
        contexts=contexts,
        results=results,
        source=part("source", str),
        base_dir=part("base_dir", str),
        elapsed_s=float(part("elapsed_s", int, float)),
        proxy_data=proxy_data,
        rng=rng,
        version=version,
    )


def _check_rng(state: dict[str, Any]) -> None:
    """Raise if ``state`` does not restore (tried, then the current states put back)."""
    if not set(state) <= {"python", "numpy", "torch"}:
        raise ValueError(f"rng: unknown generators {sorted(set(state))}")
    current = rng_state()
    try:
        restore_rng(state)
    finally:
        restore_rng(current)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def remove_checkpoint(run_dir: Path) -> None:
    """Delete the checkpoint of a completed run (it can be large: per-client state)."""
    checkpoint_path(run_dir).unlink(missing_ok=True)
