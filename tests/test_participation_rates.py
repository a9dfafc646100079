"""p_n: FedAU's label-based rule, explicit rates (list, files) and drawn rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.errors import ScenarioError
from fedsim.participation import build_pattern
from fedsim.participation.options import Options
from fedsim.participation.rates import build_rates, label_rates, lognormal_rates
from fedsim.seeding import rng


def reference_split(seed: int, num_clients: int = 250, classes: int = 10, per_class: int = 5000):
    """Label counts (N, C) cut as IBM/fedau's util.partition does (Dirichlet 0.1 mixes)."""
    generator = np.random.default_rng(seed)
    mixes = generator.dirichlet(np.full(classes, 0.1), num_clients)
    shares = mixes / mixes.sum(axis=0)
    counts = np.zeros((num_clients, classes))
    for c in range(classes):
        ends = np.round(per_class * np.cumsum(shares[:, c])).astype(int)
        counts[:, c] = np.diff(np.concatenate([[0], ends]))
    return counts


def rates_of(options: dict, num_clients: int, labels: np.ndarray | None = None, base_dir=Path(".")):
    return build_rates(
        Options(options, source="s.toml"),
        num_clients=num_clients,
        seed=3,
        label_distribution=labels,
        base_dir=base_dir,
    )


def test_label_rates_follow_the_formula_with_the_seeded_dirichlet_draw():
    d = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0]])  # counts; a client with none
    m = rng(5, "participation.rates").dirichlet(np.full(3, 0.1))
    p = label_rates(d, seed=5, p_mean=0.1, p_min=0.02)
    expected_1 = max(0.02, (0.25 * m[0] + 0.25 * m[1] + 0.5 * m[2]) * 0.1 * 3)
    assert p[0] == pytest.approx(max(0.02, m[0] * 0.3))
    assert p[1] == pytest.approx(expected_1)
    assert p[2] == 0.02


def test_label_rates_are_capped_at_one():
    d = np.eye(100)  # 100 classes: p_mean · C = 10, so a favoured class exceeds 1 uncapped
    p = label_rates(d, seed=0, p_mean=0.1, p_min=0.0)
    m = rng(0, "participation.rates").dirichlet(np.full(100, 0.1))
    assert (m * 10 > 1).any()
    np.testing.assert_allclose(p, np.minimum(1.0, m * 10))


def test_label_rates_match_the_reference_settings_mean_and_floor():
    """Reference: Dirichlet 0.1 label splits of 250 clients, p_mean 0.1, p_min 0.02.

    Without the floor the mean over clients is p_mean in expectation (within 0.005 over
    400 draws of m on one split); the floor lifts it a little (0.100–0.112 averaged over
    100 splits) and holds many clients (on average over a quarter; about 40% here).
    """
    d = reference_split(0)
    unfloored = np.array([label_rates(d, seed=s, p_min=0.0).mean() for s in range(400)])
    assert abs(unfloored.mean() - 0.1) < 0.005
    means, at_floor = [], []
    for s in range(100):
        p = label_rates(reference_split(s), seed=s)
        assert p.min() == 0.02
        means.append(p.mean())
        at_floor.append(np.mean(p == 0.02))
    assert 0.100 <= np.mean(means) <= 0.112
    assert np.mean(at_floor) > 0.25


def test_labels_are_the_default_and_use_p_keys():
    d = reference_split(1, num_clients=20)
    p = rates_of({"p_mean": 0.2, "p_min": 0.05, "p_alpha": 1.0}, 20, d)
    np.testing.assert_allclose(p, label_rates(d, seed=3, p_mean=0.2, p_min=0.05, alpha=1.0))


def test_explicit_rates_a_number_and_a_list():
    np.testing.assert_allclose(rates_of({"rates": 0.3}, 3), [0.3, 0.3, 0.3])
    np.testing.assert_allclose(rates_of({"rates": [0, 0.5, 1]}, 3), [0, 0.5, 1])


def test_rates_from_files(tmp_path):
    np.save(tmp_path / "r.npy", np.array([0.1, 0.2, 0.3]))
    (tmp_path / "r.txt").write_text("0.4\n0.5\n0.6\n")
    pd.DataFrame({"client": [2, 0, 1], "rate": [0.9, 0.7, 0.8]}).to_csv(tmp_path / "r.csv")
    np.testing.assert_allclose(rates_of({"rates": "r.npy"}, 3, base_dir=tmp_path), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(rates_of({"rates": "r.txt"}, 3, base_dir=tmp_path), [0.4, 0.5, 0.6])
    np.testing.assert_allclose(rates_of({"rates": "r.csv"}, 3, base_dir=tmp_path), [0.7, 0.8, 0.9])


def test_rate_files_are_checked(tmp_path):
    (tmp_path / "r.txt").write_text("0.4\n1.5\n0.6\n")
    (tmp_path / "short.txt").write_text("0.4\n")
    pd.DataFrame({"client": [0, 0, 1], "rate": [0.9, 0.7, 0.8]}).to_csv(tmp_path / "r.csv")
    cases = {
        "r.txt": "rates in [0, 1] in r.txt (client 1 has 1.5), got 'r.txt'",
        "short.txt": "3 rates (one per client) in short.txt, got 'shape (1,)'",
        "r.csv": "a readable rates file (r.csv: every client 0..2 exactly once in column client), "
        "got 'r.csv'",
        "none.npy": f"an existing file ({tmp_path / 'none.npy'} does not exist), got 'none.npy'",
        "r.json": "a .csv, .npy or .txt file of rates, got 'r.json'",
    }
    for name, expected in cases.items():
        with pytest.raises(ScenarioError) as error:
            rates_of({"rates": name}, 3, base_dir=tmp_path)
        assert str(error.value) == f"s.toml: participation.rates: expected {expected}"


def test_drawn_rates():
    p = rates_of({"rates": {"distribution": "uniform", "low": 0.2, "high": 0.3}}, 5000)
    assert p.min() >= 0.2 and p.max() <= 0.3 and abs(p.mean() - 0.25) < 0.003
    np.testing.assert_allclose(
        rates_of({"rates": {"distribution": "constant", "value": 0.4}}, 2), 0.4
    )
    ln = rates_of({"rates": {"distribution": "lognormal", "beta": 0.1, "scale": 0.5}}, 1000)
    assert ln.max() == 0.5 and (ln > 0).all()


def test_lognormal_rates_are_flgo_ln():
    sigma = -np.log(1 - 0.3 - 1e-6)
    c = rng(9, "participation.rates").lognormal(0.0, sigma, size=50)
    np.testing.assert_allclose(lognormal_rates(50, seed=9, beta=0.3), c / c.max())


def test_every_rate_pattern_sees_the_same_rates():
    options = {"rates": {"distribution": "uniform", "low": 0.1, "high": 0.9}}
    seen = [
        build_pattern(
            {"pattern": name, **options},
            num_clients=30,
            seed=4,
            label_distribution=None,
            source="s.toml",
            base_dir=Path("."),
        ).probabilities
        for name in ("bernoulli", "markov", "cyclic", "diurnal")
    ]
    for probabilities in seen[1:]:
        np.testing.assert_array_equal(probabilities, seen[0])
