"""The participation matrix and its heatmap."""

from __future__ import annotations

import numpy as np

from fedsim.participation.matrix import (
    bin_matrix,
    participation_figure,
    participation_matrix,
    save_participation_plot,
)
from fedsim.participation.patterns import CyclicPattern
from fedsim.participation.trace import TracePattern


def test_matrix_rows_are_clients_columns_are_rounds():
    pattern = TracePattern(
        [np.array([0]), np.array([1, 2]), np.array([], dtype=np.int64)], num_clients=3, end="stop"
    )
    assert participation_matrix(pattern, 4).astype(int).tolist() == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 1, 0, 0],
    ]
    assert participation_matrix(pattern, 2, first_round=2).astype(int).tolist() == [
        [0, 0],
        [1, 0],
        [1, 0],
    ]


def test_bin_matrix_averages_bins():
    matrix = np.array([[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    expected = np.array([[1, 0, 0.5], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_allclose(bin_matrix(matrix, 3, 3), expected)
    np.testing.assert_allclose(bin_matrix(matrix, 1, 2), [[5 / 9, 4 / 9]])
    assert bin_matrix(matrix, 10, 10).shape == (3, 6)


def test_figure_has_labelled_axes():
    matrix = participation_matrix(CyclicPattern(np.full(5, 0.3), period=10, seed=0), 40)
    figure = participation_figure(matrix, title="cyclic")
    axes, colorbar = figure.axes
    assert axes.get_xlabel() == "round" and axes.get_ylabel() == "client"
    assert axes.get_title() == "cyclic" and colorbar.get_ylabel() == "reachable"
    image = axes.get_images()[0]
    np.testing.assert_array_equal(image.get_array(), matrix.astype(float))
    assert image.get_extent() == [0.5, 40.5, 4.5, -0.5]


def test_large_matrices_are_binned():
    matrix = np.zeros((1000, 3000), dtype=bool)
    figure = participation_figure(matrix, first_round=11)
    axes, colorbar = figure.axes
    data = axes.get_images()[0].get_array()
    assert data is not None and data.shape == (400, 1000)
    assert colorbar.get_ylabel() == "fraction reachable (binned)"
    assert axes.get_images()[0].get_extent() == [10.5, 3010.5, 999.5, -0.5]


def test_png_is_written(tmp_path):
    matrix = participation_matrix(CyclicPattern(np.full(8, 0.5), period=6, seed=1), 30)
    path = save_participation_plot(matrix, tmp_path / "participation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
