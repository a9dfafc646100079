"""Checkpoints: what a run needs to go on after a crash, a ``kill -9`` or Ctrl-C.

A run directory holds at most one checkpoint, ``checkpoint.pkl``, replaced
atomically (temporary file + rename) every ``[checkpoint] every`` rounds and
when a run is interrupted, so a kill at any instant leaves the previous
complete checkpoint or the new one. It holds everything that changes from
round to round; everything else is rebuilt from the run's ``scenario.toml``
and its ``client_data`` store, which a run is deterministic in:

- the last round done and the global model (name → array, in order);
- the strategy's state: ``state_dict()`` when the strategy has one (fedsim's
  strategies), else its attributes (Flower's ``FedAdam`` keeps m_t and v_t
  there), pickled with cloudpickle;
- every node's Flower ``Context`` (``Context.state`` holds a client's
  data-stream position);
- every row of results so far (metrics, participation, events);
- the driver's random states (Python, NumPy's legacy global, torch's CPU
  generator); fedsim draws nothing from them, but a user's plugin might;
- the scenario's origin (its file and folder, so that relative plugin, trace
  and topology paths still resolve) and the server's proxy set, if any, so
  that a resumed run need not load the data set again.

Rows of later rounds already flushed to the tables are discarded on resume, so
a resumed run's results equal an uninterrupted run's (timing rows aside).
The file is a pickle: resume only runs you made yourself.
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context

from fedsim.errors import FedsimError, RunError
from fedsim.results.writer import SCENARIO_FILE, SUMMARY_FILE, atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pkl"
FORMAT_VERSION = 1
STATE_DICT = "state_dict"
ATTRIBUTES = "attributes"


class RunInterrupted(RunError):
    """The run stopped at a stop request (Ctrl-C) after ``round``; it can be resumed."""

    def __init__(self, round: int, rounds: int, run_dir: Path, resumable: bool) -> None:
        self.round = round
        self.run_dir = run_dir
        self.resumable = resumable
        where = f"interrupted after round {round} of {rounds}; results so far in {run_dir}"
        if resumable:
            message = f"{where}; continue with: fedsim resume {run_dir}"
        else:
            message = f"{where} (this engine writes no checkpoints: the run cannot be resumed)"
        super().__init__(message)


@dataclass
class StrategyState:
    """A strategy's state: its ``state_dict()`` or, lacking one, its attributes."""

    kind: str  # STATE_DICT or ATTRIBUTES
    payload: bytes  # cloudpickle of the state dict or of vars(strategy)


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
    """The pickler of checkpoints: cloudpickle (a fedsim dependency), which takes lambdas
    and classes defined in plugin files; Ray's bundled copy or plain pickle if it is missing.

    No Ray needed: the inline engine checkpoints without it. Every checkpoint loads with
    plain ``pickle``; one written by an older fedsim through Ray's copy needs Ray installed
    only if it holds an object pickled by value (a function or a plugin file's class).
    """
    try:
        import cloudpickle
    except ImportError:
        try:
            from ray import cloudpickle
        except ImportError:
            return pickle
    return cloudpickle


def strategy_state(strategy: Any) -> StrategyState:
    """The state of ``strategy``: ``state_dict()`` if it has one, else its attributes.

    >>> class Counter:
    ...     def __init__(self):
    ...         self.count = 0
    >>> counter = Counter(); counter.count = 3
    >>> state = strategy_state(counter); fresh = Counter(); restore_strategy(fresh, state)
    >>> state.kind, fresh.count
    ('attributes', 3)
    """
    dumps = _cloudpickle().dumps
    if callable(getattr(strategy, "state_dict", None)):
        return StrategyState(STATE_DICT, dumps(strategy.state_dict()))
    return StrategyState(ATTRIBUTES, dumps(vars(strategy)))


def restore_strategy(strategy: Any, state: StrategyState) -> None:
    """Put :func:`strategy_state`'s result back into a freshly built strategy."""
    value = pickle.loads(state.payload)
    if state.kind == STATE_DICT:
        strategy.load_state_dict(value)
    elif state.kind == ATTRIBUTES:
        vars(strategy).update(value)
    else:
        raise ValueError(f"unknown strategy state kind {state.kind!r}")


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


# --- the file -----------------------------------------------------------------


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_FILE


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``run_dir`` atomically; returns the file's path."""
    buffer = io.BytesIO()
    _cloudpickle().dump(checkpoint, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    path = checkpoint_path(run_dir)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The checkpoint of an unfinished run; a one-line FedsimError for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedsimError(f"{run_dir}: no such run directory")
    if not (run_dir / SCENARIO_FILE).is_file():
        raise FedsimError(f"{run_dir}: not a fedsim run directory (no {SCENARIO_FILE})")
    if (run_dir / SUMMARY_FILE).is_file():
        raise FedsimError(f"{run_dir}: the run is complete ({SUMMARY_FILE}); nothing to resume")
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FedsimError(
            f"{run_dir}: no {CHECKPOINT_FILE} to resume from (the run stopped before its "
            "first checkpoint, see [checkpoint] every); start it again"
        )
    try:
        checkpoint = pickle.loads(path.read_bytes())
    except Exception as error:  # a damaged file can fail in any unpickling step
        raise FedsimError(
            f"{path}: unreadable checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(checkpoint, Checkpoint):
        raise FedsimError(f"{path}: not a fedsim checkpoint")
    if checkpoint.version != FORMAT_VERSION:
        raise FedsimError(
            f"{path}: checkpoint format {checkpoint.version}, this fedsim reads {FORMAT_VERSION}"
        )
    return checkpoint


def remove_checkpoint(run_dir: Path) -> None:
    """Delete the checkpoint of a completed run (it can be large: per-client state)."""
    checkpoint_path(run_dir).unlink(missing_ok=True)
