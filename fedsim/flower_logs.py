"""Flower's console lines kept to warnings and errors under fedsim's own output.

Flower logs a line per aggregation at INFO ("aggregate_train: Received 10 results"),
and sets its logger to DEBUG when it is first imported, which in fedsim happens after
the command line starts (Flower is imported lazily, so that a mistake is reported at
once): a level set before that is lost. A filter on the logger is not.
"""

from __future__ import annotations

import logging

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
