"""Per-client facts of a run (``clients.parquet``): what the analysis needs to know
about the clients without rebuilding the run's data or participation pattern."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsim.results.schema import CLIENT_COLUMNS, LABEL_PREFIX


@dataclass(frozen=True, eq=False)
class ClientFacts:
    """Per client: training and local test examples and the label mix (N × C, rows
    sum to 1, 0 for a client without data), known when fedsim's data store serves
    the clients; the long-run participation rate p_n, known when the pattern has
    one (not for traces, scripts or Markovian patterns without stated rates).
    Unknown facts are None.

    >>> facts = ClientFacts(2, np.array([3, 1]), np.array([1, 0]),
    ...                     np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0.2, 0.8]))
    >>> ClientFacts.from_frame(facts.to_frame()).same_as(facts)
    True
    >>> ClientFacts(2, None, None, None, np.array([0.2, 0.8])).to_frame().columns.tolist()
    ['client', 'train_examples', 'test_examples', 'participation_probability']
    """

    num_clients: int
    train_examples: np.ndarray | None
    test_examples: np.ndarray | None
    label_mix: np.ndarray | None
    participation_probability: np.ndarray | None

    def to_frame(self) -> pd.DataFrame:
        n = self.num_clients

        def column(values: np.ndarray | None, dtype: str) -> pd.Series:
            return pd.Series(np.full(n, np.nan) if values is None else values).astype(dtype)

        frame = pd.DataFrame(
            {
                "client": np.arange(n, dtype=np.int64),
                "train_examples": column(self.train_examples, "Int64"),
                "test_examples": column(self.test_examples, "Int64"),
                "participation_probability": column(self.participation_probability, "float64"),
            }
        )[CLIENT_COLUMNS]
        if self.label_mix is None:
            return frame
        labels = pd.DataFrame(
            np.asarray(self.label_mix, dtype=np.float64),
            columns=[f"{LABEL_PREFIX}{c}" for c in range(self.label_mix.shape[1])],
        )
        return pd.concat([frame, labels], axis=1)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> ClientFacts:
        frame = frame.sort_values("client")
        label_columns = [c for c in frame.columns if c.startswith(LABEL_PREFIX)]
        label_columns.sort(key=lambda c: int(c[len(LABEL_PREFIX) :]))

        def column(name: str, dtype: type) -> np.ndarray | None:
            values = frame[name]
            return None if values.isna().all() else values.to_numpy(dtype)

        return cls(
            num_clients=len(frame),
            train_examples=column("train_examples", np.int64),
            test_examples=column("test_examples", np.int64),
            label_mix=frame[label_columns].to_numpy(np.float64) if label_columns else None,
            participation_probability=column("participation_probability", np.float64),
        )

    def same_as(self, other: ClientFacts) -> bool:
        """Equal facts, array by array (None equals only None)."""
        pairs = [
            (self.train_examples, other.train_examples),
            (self.test_examples, other.test_examples),
            (self.label_mix, other.label_mix),
            (self.participation_probability, other.participation_probability),
        ]
        return self.num_clients == other.num_clients and all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
            for a, b in pairs
        )
