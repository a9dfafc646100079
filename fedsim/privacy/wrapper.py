"""The strategy wrapper of central differential privacy: any strategy, its math unchanged.

:class:`PrivateStrategy` wraps a Flower Message-API strategy (fedsim's, a plugin,
or ``flwr:``). It remembers the global arrays each round sends; when the
replies come back it turns each into an update Δ_i = y_i − x, clips it, adds
the client's share of the round's Gaussian noise (scaled to the sensitivity of
the wrapped strategy's weighting, :mod:`fedsim.privacy.mechanism`) and hands
the wrapped strategy replies whose arrays are x + the privatised update. For
the linear rules (FedAvg over participants or all, FedAU) the wrapped
strategy's own weighted sum is then exactly Σ w_i clip(Δ_i) + ξ.

The noise of round t is drawn from the stream (seed, "privacy-noise", t), so a
resumed run draws the same noise without carrying a generator; the state a
checkpoint keeps is the adaptive clip norm and the wrapped strategy's own.
After each aggregation :attr:`PrivateStrategy.round_metrics` holds the round's
privacy rows (ε so far, the clip norm and noise std used, the fraction of
updates that needed no clipping), which the run writes to its metrics table.
With local DP (:mod:`fedsim.privacy.local`) the clients have privatised their
updates already: the wrapper leaves the replies alone and only accounts, and it
wraps decentralised strategies too. Asynchronous strategies are refused in both
modes (their aggregation does not follow rounds).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.arrays import Layout
from fedsim.privacy.accounting import Accountant, Sampling
from fedsim.privacy.mechanism import (
    adaptive_clip_norm,
    privatise,
    sensitivity_all,
    sensitivity_fedau,
    sensitivity_participants,
    split_noise_multiplier,
)
from fedsim.privacy.options import PrivacyConfig
from fedsim.seeding import rng

NOISE_PURPOSE = "privacy-noise"
COUNT_PURPOSE = "privacy-count"


def resolve_weighting(strategy: Any, weighting: str) -> str:
    """The weighting whose sensitivity scales the noise: ``auto`` reads the strategy
    (FedAU's ω, FedAvg's ``all`` rule, else the participants' data-size weights)."""
    if weighting != "auto":
        return weighting
    if callable(getattr(strategy, "omega_of", None)):
        return "fedau"
    if getattr(strategy, "rule", None) == "all":
        return "all"
    return "participants"


def unsupported_reason(strategy: Any, mode: str = "central") -> str | None:
    """Why ``strategy`` cannot be wrapped (None: it can); local DP takes any strategy
    with rounds."""
    if getattr(strategy, "asynchronous", False):
        return "an asynchronous strategy (it aggregates outside rounds)"
    if mode == "local":
        return None
    if callable(getattr(strategy, "evaluate_nodes", None)):
        return 'a decentralised strategy (no single global model to noise; mode = "local" can)'
    if getattr(strategy, "rule", None) == "known-probability":
        return "FedAvg's known-probability rule (its weights 1/(N p_n) have no bound here)"
    return None


def _reply_arrays(content: RecordDict) -> tuple[str, ArrayRecord]:
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            return name, record
    raise ValueError("a training reply without an ArrayRecord")


def _examples(content: RecordDict, key: str) -> float:
    for record in content.values():
        if isinstance(record, MetricRecord) and key in record:
            value = record[key]
            if isinstance(value, int | float):
                return float(value)
    raise ValueError(f"a training reply without the metric {key!r}")


class PrivateStrategy(Strategy):
    """``strategy`` with each reply's update clipped and the aggregate noised.

    Attributes not defined here (``client_metrics``, ``fraction_train``, ...) are the
    wrapped strategy's.
    """

    def __init__(
        self,
        strategy: Any,
        config: PrivacyConfig,
        *,
        num_clients: int,
        seed: int,
        sampling: Sampling,
        max_examples: float | None = None,
    ) -> None:
        reason = unsupported_reason(strategy, config.mode)
        if reason is not None:
            raise ValueError(f"differential privacy cannot wrap {reason}")
        self.strategy = strategy
        self.config = config
        self.num_clients = num_clients
        self.seed = seed
        self.max_examples = max_examples
        self.weighting = resolve_weighting(strategy, config.weighting)
        if self.weighting == "fedau" and not callable(getattr(strategy, "omega_of", None)):
            raise ValueError(
                f'weighting = "fedau" needs a strategy with omega_of (FedAU), '
                f"not {type(strategy).__name__}"
            )
        self.clip_norm = config.clip_norm
        self.sampling = sampling
        # Local DP: each report against any other (sensitivity 2C) has multiplier σ/2.
        accounted = config.noise_multiplier / (2.0 if config.mode == "local" else 1.0)
        self.accountant = Accountant(sampling, accounted, config.delta, config.accountant)
        # The expected number of replies a round (public): the adaptive count's denominator.
        self.expected_replies = max(1.0, float(sampling.rates.sum()))
        self.count_stddev = config.count_stddev or self.expected_replies / 20.0  # Andrew et al.
        self.update_noise_multiplier = (
            split_noise_multiplier(config.noise_multiplier, self.count_stddev)
            if config.adaptive
            else config.noise_multiplier
        )
        self.round_metrics: dict[str, float] = {}
        self._sent: ArrayRecord | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "strategy":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.strategy, name)

    # --- the rounds -------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages; the arrays sent are the updates' origin."""
        self._sent = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Privatise the replies' updates, then let the wrapped strategy aggregate them."""
        replies = list(replies)
        valid = [reply for reply in replies if not reply.has_error()]
        clip_norm = self.clip_norm
        noise_std, unclipped = 0.0, 0
        if self.config.mode == "local":  # the clients privatised their own updates
            noise_std, unclipped = self.config.noise_multiplier * clip_norm, len(valid)
        elif valid:
            noise_std, unclipped = self._privatise(server_round, valid)
        if self.config.adaptive:
            count_noise = float(
                rng(self.seed, COUNT_PURPOSE, server_round).normal(0.0, self.count_stddev)
            )
            self.clip_norm = adaptive_clip_norm(
                clip_norm,
                unclipped=unclipped,
                replies=len(valid),
                expected=self.expected_replies,
                count_noise=count_noise,
                target_quantile=self.config.target_quantile,
                learning_rate=self.config.clip_lr,
            )
        result = self.strategy.aggregate_train(server_round, replies)
        self.round_metrics = {
            keys.DP_EPSILON: self.accountant.worst(server_round),
            keys.DP_CLIP_NORM: clip_norm,
            keys.DP_NOISE_STD: noise_std,
            keys.DP_UNCLIPPED_FRACTION: unclipped / len(valid) if valid else float("nan"),
        }
        return result

    def _privatise(self, server_round: int, valid: list[Message]) -> tuple[float, int]:
        """Replace each valid reply's arrays by x + clip(Δ) + its noise share; returns the
        noise std on the aggregate and how many updates were within the clip norm."""
        if self._sent is None:
            raise RuntimeError("aggregate_train called before configure_train")
        layout = Layout.of(self._sent)
        origin = layout.flatten(self._sent).double().numpy()
        contents = [reply.content for reply in valid]
        updates = np.stack(
            [layout.flatten(_reply_arrays(c)[1]).double().numpy() - origin for c in contents]
        )
        weights, sensitivity = self._weights(server_round, valid)
        noise_std = self.update_noise_multiplier * sensitivity
        rows, norms = privatise(
            updates,
            weights,
            clip_norm=self.clip_norm,
            noise_std=noise_std,
            generator=rng(self.seed, NOISE_PURPOSE, server_round),
        )
        import torch

        for reply, content, row in zip(valid, contents, rows, strict=True):
            name, _ = _reply_arrays(content)
            record = layout.to_record(torch.from_numpy(origin + row))
            reply.content = RecordDict(
                {key: record if key == name else value for key, value in content.items()}
            )
        return noise_std, int(np.sum(norms <= self.clip_norm))

    def _weights(self, server_round: int, valid: list[Message]) -> tuple[np.ndarray, float]:
        """The weights the wrapped strategy will give the replies, and the sensitivity."""
        clip_norm, n = self.clip_norm, self.num_clients
        if self.weighting == "all":
            return np.full(len(valid), 1.0 / n), sensitivity_all(clip_norm, n)
        if self.weighting == "fedau":
            omega = np.array(
                [self.strategy.omega_of(r.metadata.src_node_id, server_round) for r in valid]
            )
            cutoff = getattr(self.strategy, "cutoff", None)
            return omega / n, sensitivity_fedau(clip_norm, n, server_round, cutoff)
        key = getattr(self.strategy, "weighted_by_key", "num-examples")
        examples = np.array([_examples(r.content, key) for r in valid])
        if getattr(self.strategy, "uniform_weights", False):
            examples = np.ones(len(valid))
            largest = 1.0
        else:
            largest = self.max_examples or float(examples.max())
        weights = examples / examples.sum()
        return weights, sensitivity_participants(clip_norm, examples, largest)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    # --- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The clip norm and the wrapped strategy's state (never pickled: a strategy
        whose state is not data makes the checkpoint fail as it would unwrapped)."""
        from fedsim.simulation.checkpoint import strategy_state

        inner = strategy_state(self.strategy)
        return {"clip_norm": self.clip_norm, "kind": inner.kind, "strategy": inner.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from fedsim.simulation.checkpoint import StrategyState, restore_strategy

        self.clip_norm = float(state["clip_norm"])
        restore_strategy(self.strategy, StrategyState(str(state["kind"]), state["strategy"]))
