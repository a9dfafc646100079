"""The clients × rounds participation matrix of a pattern, and a heatmap of it.

Looking at the matrix is the quickest check that a scenario's participation is
what was meant (cyclic stripes, Markov runs, a scripted outage), and the
figure goes into reports. Large matrices are drawn binned: each cell is then
the fraction of reachable (client, round) pairs in its bin. Figures are drawn
on matplotlib's Agg canvas directly, without pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


class _Reachable(Protocol):
    num_clients: int

    def reachable(self, round: int) -> np.ndarray: ...


def participation_matrix(pattern: _Reachable, rounds: int, *, first_round: int = 1) -> np.ndarray:
    """Boolean (clients, rounds) matrix: entry [n, j] says whether client n is reachable
    in round ``first_round + j``.

    >>> from fedsim.participation.patterns import AlwaysPattern
    >>> participation_matrix(AlwaysPattern(2), 3).astype(int).tolist()
    [[1, 1, 1], [1, 1, 1]]
    """
    matrix = np.zeros((pattern.num_clients, rounds), dtype=bool)
    for j in range(rounds):
        matrix[pattern.reachable(first_round + j), j] = True
    return matrix


def bin_matrix(matrix: np.ndarray, max_rows: int, max_cols: int) -> np.ndarray:
    """Mean of ``matrix`` over near-equal bins so that it has at most max_rows × max_cols cells.

    >>> bin_matrix(np.array([[1, 0, 1, 1]]), 1, 2).tolist()
    [[0.5, 1.0]]
    """
    values = np.asarray(matrix, dtype=np.float64)
    for axis, limit in ((0, max_rows), (1, max_cols)):
        size = values.shape[axis]
        if size > limit:
            edges = np.linspace(0, size, limit + 1).round().astype(np.int64)
            sums = np.add.reduceat(values, edges[:-1], axis=axis)
            widths = np.diff(edges).reshape([-1 if a == axis else 1 for a in range(2)])
            values = sums / widths
    return values


def participation_figure(
    matrix: np.ndarray,
    *,
    first_round: int = 1,
    title: str | None = None,
    max_rows: int = 400,
    max_cols: int = 1000,
) -> Figure:
    """A heatmap of ``matrix`` (clients × rounds): rounds across, clients down."""
    num_clients, num_rounds = matrix.shape
    binned = num_clients > max_rows or num_rounds > max_cols
    values = bin_matrix(matrix, max_rows, max_cols)
    figure = Figure(figsize=(10, 4 + min(4, num_clients / 100)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(
        values,
        aspect="auto",
        interpolation="nearest",
        cmap="Greys",
        vmin=0,
        vmax=1,
        origin="upper",
        extent=(first_round - 0.5, first_round + num_rounds - 0.5, num_clients - 0.5, -0.5),
    )
    axes.set_xlabel("round")
    axes.set_ylabel("client")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title or f"reachable clients ({num_clients} clients, {num_rounds} rounds)")
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label("fraction reachable (binned)" if binned else "reachable")
    return figure


def save_participation_plot(
    matrix: np.ndarray,
    path: str | Path,
    *,
    first_round: int = 1,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write the heatmap of ``matrix`` as a PNG at ``path`` and return the path."""
    path = Path(path)
    figure = participation_figure(matrix, first_round=first_round, title=title)
    figure.savefig(path, format="png", dpi=dpi)
    return path
