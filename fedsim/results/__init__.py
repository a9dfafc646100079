"""A run directory's files: their schema (names, columns, event kinds, summary fields)
and every write to them. The reading side (:mod:`fedsim.analysis`) reads what this
package writes and nothing else."""

from fedsim.results.clients import ClientFacts
from fedsim.results.schema import *  # noqa: F403
from fedsim.results.writer import RoundLog, RunWriter, atomic_write_bytes, atomic_write_parquet

__all__ = ["ClientFacts", "RoundLog", "RunWriter", "atomic_write_bytes", "atomic_write_parquet"]
