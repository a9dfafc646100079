"""Flower's console lines kept to warnings and errors under fedsim's own output.

Flower logs a line per aggregation at INFO ("aggregate_train: Received 10 results"),
and sets its logger to DEBUG when it is first imported, which in fedsim happens after
the command line starts (Flower is imported lazily, so that a mistake is reported at
once): a level set before that is lost. A filter on the logger is not. The command line
adds it for the whole process (:func:`quiet_flower`); the Python API for the duration of
a call (:func:`flower_quieted`), so that a notebook's own logging is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

FLOWER_LOGGER = "flwr"


def _warnings_and_up(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_flower() -> None:
    """Keep Flower's INFO and DEBUG lines out of this process's output (once is enough).

    >>> quiet_flower(); quiet_flower()
    >>> logging.getLogger(FLOWER_LOGGER).filters.count(_warnings_and_up)
    1
    """
    logger = logging.getLogger(FLOWER_LOGGER)
    if _warnings_and_up not in logger.filters:
        logger.addFilter(_warnings_and_up)


@contextlib.contextmanager
def flower_quieted(quiet: bool = True) -> Iterator[None]:
    """Flower's INFO and DEBUG lines kept out while the block runs (``quiet``), and let
    through again after it, unless :func:`quiet_flower` keeps them out for good.

    >>> with flower_quieted():
    ...     logging.getLogger(FLOWER_LOGGER).filters.count(_warnings_and_up)
    1
    """
    logger = logging.getLogger(FLOWER_LOGGER)
    if not quiet or _warnings_and_up in logger.filters:
        yield
        return
    logger.addFilter(_warnings_and_up)
    try:
        yield
    finally:
        logger.removeFilter(_warnings_and_up)
