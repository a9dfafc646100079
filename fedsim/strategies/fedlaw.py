"""FedLAW: the server learns a global shrinking factor γ and aggregation weights λ.

Li et al., "Revisiting Weighted Aggregation in Federated Learning with Neural
Networks", ICML 2023, https://arxiv.org/abs/2302.10911 (reference code:
github.com/ZexiLee/ICML-2023-FedLAW, ``server_funct.py:fedlaw_optimization``).

Each round, over the K clients that replied (p_i = m_i / Σ_j m_j, m the example
counts), the server holds θ ∈ R^{K+1} and the aggregate

    w(θ) = γ · Σ_i λ_i w_i      (w_i a client's full weights, not its update)

- ``softmax`` (the paper's and the reference's default, ``server_funct='exp'``):
  λ = softmax(θ[:K]), γ = exp(θ[K]), θ re-initialised every round to
  [log p_1, …, log p_K, 0], so λ = p and γ = 1 (FedAvg) at the start;
- ``quad`` (the reference's ``server_funct='quad'``): λ_i = θ_i² / Σ_j θ_j²,
  γ = θ_K², θ re-initialised to [√(1/K), …, √(1/K), 1] — λ starts *uniform*,
  not at p, exactly as the reference does.

θ is fitted by Adam(``server_lr``, ``betas``) for ``server_epochs`` shuffled
passes over the server's proxy set in batches of ``batch_size``, minimising
plain cross-entropy of the model evaluated functionally at w(θ)
(:func:`torch.func.functional_call`, so gradients reach θ; the client weights
are detached constants), model in train mode. As in the reference, the
learning rate halves every 20 epochs (``StepLR(20, 0.5)``, a no-op at the
default 20 epochs). The new global model is w(θ) with θ detached.

w(θ) covers every ``nn.Parameter`` of the model (weights, biases, norm
affine). Buffers (BatchNorm running statistics, ``num_batches_tracked``) are
not part of w. The reference never aggregates them: its server model keeps its
own buffers from round to round, and they change only through the train-mode
forward passes of the server optimisation. fedsim does the same: **the new
global buffers are the previous global model's buffers, updated by the
train-mode forward passes over the proxy set during the optimisation** (one
BatchNorm momentum step per batch, at the w(θ) of that step). The clients'
buffers are ignored; with ``server_epochs = 0`` the buffers do not change.

Known weakness (reported on the reference code, kept reproducible here): with
100 clients and 10% participation FedLAW can fail to learn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Message, MetricRecord
from torch.func import functional_call

from fedsim.arrays import Layout
from fedsim.data.partition import class_balanced_indices
from fedsim.seeding import seed_sequence, torch_generator
from fedsim.strategies.base import ServerUpdateStrategy

__all__ = [
    "GAMMA_KEY",
    "LAMBDA_KEY",
    "PARAMETERISATIONS",
    "FedLAW",
    "ModelSplit",
    "ServerFit",
    "ServerModel",
    "ServerSettings",
    "aggregate",
    "class_balanced_indices",
    "coefficients",
    "fit_theta",
    "initial_theta",
    "size_weights",
]

PARAMETERISATIONS = ("softmax", "quad")
GAMMA_KEY = "gamma"  # aggregated train MetricRecord: the learned γ of the round
LAMBDA_KEY = "lambda"  # client_metrics: each replying client's learned λ_i
SERVER_LOSS_KEY = "server_loss"  # mean proxy cross-entropy of the last server epoch
LR_STEP_EPOCHS = 20  # the reference's StepLR(step_size=20, gamma=0.5)
LR_STEP_FACTOR = 0.5


# --- the parameterisation (pure) ---------------------------------------------


def size_weights(num_examples: np.ndarray) -> np.ndarray:
    """p_i = m_i / Σ_j m_j.

    >>> size_weights(np.array([1.0, 3.0])).tolist()
    [0.25, 0.75]
    """
    counts = np.asarray(num_examples, dtype=np.float64)
    if counts.size == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError(f"FedLAW needs non-negative example counts, some > 0; got {counts}")
    return counts / counts.sum()


def initial_theta(p: torch.Tensor, parameterisation: str = "softmax") -> torch.Tensor:
    """θ at the start of a round: [log p, 0] (softmax) or [√(1/K)…, 1] (quad).

    >>> initial_theta(torch.tensor([0.25, 0.75])).exp().tolist()
    [0.25, 0.75, 1.0]
    >>> [round(v, 6) for v in initial_theta(torch.tensor([0.2, 0.8]), "quad").pow(2).tolist()]
    [0.5, 0.5, 1.0]
    """
    one = torch.ones(1, dtype=p.dtype, device=p.device)
    if parameterisation == "softmax":
        return torch.cat([torch.log(p), torch.zeros_like(one)])
    if parameterisation == "quad":
        return torch.cat([torch.full_like(p, (1.0 / len(p)) ** 0.5), one])
    raise ValueError(
        f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}"
    )


def coefficients(
    theta: torch.Tensor, parameterisation: str = "softmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(γ, λ) of θ; differentiable.

    >>> gamma, lam = coefficients(torch.tensor([0.0, 0.0, 0.0]))
    >>> float(gamma), lam.tolist()
    (1.0, [0.5, 0.5])
    >>> gamma, lam = coefficients(torch.tensor([1.0, 2.0, 3.0]), "quad")
    >>> float(gamma), [round(v, 6) for v in lam.tolist()]
    (9.0, [0.2, 0.8])
    """
    if parameterisation == "softmax":
        return torch.exp(theta[-1]), torch.softmax(theta[:-1], dim=0)
    if parameterisation == "quad":
        squares = theta[:-1] * theta[:-1]
        return theta[-1] * theta[-1], squares / squares.sum()
    raise ValueError(
        f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}"
    )


def aggregate(
    theta: torch.Tensor, client_vectors: torch.Tensor, parameterisation: str = "softmax"
) -> torch.Tensor:
    """w(θ) = γ Σ_i λ_i w_i over the rows of ``client_vectors``; differentiable in θ.

    >>> theta = torch.tensor([0.0, float(np.log(3.0)), float(np.log(2.0))])
    >>> [round(v, 5) for v in aggregate(theta, torch.tensor([[4.0, 0.0], [0.0, 8.0]])).tolist()]
    [2.0, 12.0]
    """
    gamma, lam = coefficients(theta, parameterisation)
    return gamma * (lam @ client_vectors)


# --- the model, evaluated functionally at a flat vector ------------------------


@dataclass(frozen=True)
class ModelSplit:
    """Which entries of a flat model vector are parameters, which are buffers.

    ``names``/``sizes`` follow the :class:`~fedsim.arrays.Layout` (state_dict
    keys); ``shapes`` and ``buffer_dtypes`` are the model's own.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    is_parameter: tuple[bool, ...]
    buffer_dtypes: tuple[tuple[str, torch.dtype], ...]

    @classmethod
    def of(cls, layout: Layout, model: torch.nn.Module) -> ModelSplit:
        parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        state = model.state_dict()
        if set(state) != set(layout.names):
            raise ValueError(
                f"model_factory's model has entries {sorted(state)}, "
                f"the run's model {sorted(layout.names)}"
            )
        shapes = tuple(tuple(state[name].shape) for name in layout.names)
        if tuple(int(np.prod(shape)) for shape in shapes) != layout.sizes:
            raise ValueError(
                f"model_factory's model has shapes {shapes}, the run's model {layout.shapes}"
            )
        return cls(
            names=layout.names,
            shapes=shapes,
            sizes=layout.sizes,
            is_parameter=tuple(name in parameters for name in layout.names),
            buffer_dtypes=tuple(
                (name, state[name].dtype) for name in layout.names if name not in parameters
            ),
        )

    def _pieces(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return [
            piece.reshape(shape)
            for piece, shape in zip(torch.split(vector, list(self.sizes)), self.shapes, strict=True)
        ]

    def parameters(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter entries of ``vector`` as named views (gradients flow)."""
        pieces = zip(self.names, self._pieces(vector), self.is_parameter, strict=True)
        return {name: piece for name, piece, is_param in pieces if is_param}

    def buffers(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fresh copies of the buffer entries of ``vector``, in the model's dtypes."""
        pieces = dict(zip(self.names, self._pieces(vector.detach()), strict=True))
        return {name: pieces[name].to(dtype).clone() for name, dtype in self.buffer_dtypes}

    def with_buffers(self, vector: torch.Tensor, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """``vector`` (detached) with its buffer entries replaced by ``buffers``."""
        pieces = self._pieces(vector.detach())
        parts = [
            piece if is_param else buffers[name].to(piece.dtype)
            for name, piece, is_param in zip(self.names, pieces, self.is_parameter, strict=True)
        ]
        return torch.cat([part.reshape(-1) for part in parts])


class ServerModel:
    """The run's model on the server, for passes over the proxy set: built by ``factory``
    on first use, gradients off (the passes differentiate the vector, not the module), and
    built again should the global model's layout change; with its parameter/buffer split.
    FedLAW and the FedAvg + proxy baseline share it."""

    def __init__(self, factory: Callable[[], torch.nn.Module], device: torch.device) -> None:
        self.factory, self.device = factory, device
        self._built: tuple[torch.nn.Module, ModelSplit] | None = None

    def of(self, layout: Layout) -> tuple[torch.nn.Module, ModelSplit]:
        if self._built is None or self._built[1].names != layout.names:
            model = self.factory().to(self.device).requires_grad_(False)
            self._built = (model, ModelSplit.of(layout, model))
        return self._built


@dataclass(frozen=True)
class ServerSettings:
    """The server optimisation's options (see the module docstring)."""

    server_epochs: int = 20
    server_lr: float = 0.01
    batch_size: int = 128
    betas: tuple[float, float] = (0.5, 0.999)
    parameterisation: str = "softmax"


@dataclass(frozen=True)
class ServerFit:
    """One round's result: θ (detached), the updated buffers, mean loss per epoch."""

    theta: torch.Tensor
    buffers: dict[str, torch.Tensor]
    epoch_losses: tuple[float, ...]


def fit_theta(
    model: torch.nn.Module,
    split: ModelSplit,
    client_vectors: torch.Tensor,
    theta0: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    proxy: tuple[torch.Tensor, torch.Tensor],
    settings: ServerSettings,
    generator: torch.Generator,
) -> ServerFit:
    """Fit θ by Adam on the proxy cross-entropy of the model at w(θ).

    ``buffers`` are copied, then updated by the model's train-mode forward
    passes; ``generator`` (CPU) shuffles the proxy set each epoch. Randomness
    inside the model (dropout) uses torch's global generator: seed it in a
    :func:`torch.random.fork_rng` block around this call.
    """
    constants = client_vectors.detach()
    state = {name: tensor.clone() for name, tensor in buffers.items()}
    theta = theta0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=settings.server_lr, betas=settings.betas)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, LR_STEP_EPOCHS, LR_STEP_FACTOR)
    x, y = proxy
    model.train()
    losses: list[torch.Tensor] = []
    for _ in range(settings.server_epochs):
        order = torch.randperm(len(y), generator=generator).to(y.device)
        batch_losses = []
        for batch in torch.split(order, settings.batch_size):
            weights = split.parameters(aggregate(theta, constants, settings.parameterisation))
            logits = functional_call(model, {**weights, **state}, (x[batch],))
            loss = F.cross_entropy(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batch_losses.append(loss.detach())
        scheduler.step()
        losses.append(torch.stack(batch_losses).mean())
    epoch_losses = tuple(torch.stack(losses).tolist()) if losses else ()
    return ServerFit(theta.detach(), state, epoch_losses)


# --- the strategy --------------------------------------------------------------


def _check_settings(settings: ServerSettings) -> None:
    if settings.parameterisation not in PARAMETERISATIONS:
        raise ValueError(
            f"parameterisation must be one of {PARAMETERISATIONS}, "
            f"got {settings.parameterisation!r}"
        )
    if isinstance(settings.server_epochs, bool) or not isinstance(settings.server_epochs, int):
        raise ValueError(f"server_epochs must be an integer >= 0, got {settings.server_epochs!r}")
    if settings.server_epochs < 0:
        raise ValueError(f"server_epochs must be an integer >= 0, got {settings.server_epochs}")
    if isinstance(settings.batch_size, bool) or not isinstance(settings.batch_size, int):
        raise ValueError(f"batch_size must be an integer >= 1, got {settings.batch_size!r}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {settings.batch_size}")
    if not settings.server_lr > 0:
        raise ValueError(f"server_lr must be > 0, got {settings.server_lr}")
    if len(settings.betas) != 2 or not all(0.0 <= b < 1.0 for b in settings.betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {list(settings.betas)}")


def _pair(betas: Sequence[float]) -> tuple[float, float]:
    values = [float(b) for b in betas]
    if len(values) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {values}")
    return values[0], values[1]


@contextmanager
def _seeded_torch_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global generator of ``device`` (dropout) inside, restore it after."""
    cuda = device.type == "cuda"
    index = (
        (device.index if device.index is not None else torch.cuda.current_device()) if cuda else 0
    )
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _check_proxy(proxy_data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x, y = (np.asarray(part) for part in proxy_data)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) == 0:
        raise ValueError(f"proxy labels must be a non-empty 1-D integer array, got {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"proxy_data has {len(x)} inputs but {len(y)} labels")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


class FedLAW(ServerUpdateStrategy):
    """FedLAW: learn γ and λ on a server-held proxy set every round.

    Options (``[strategy]`` table): ``server_epochs`` (20), ``server_lr`` (0.01;
    the reference uses 0.01 on CIFAR-10, 0.005 elsewhere), ``batch_size`` (128),
    ``betas`` ([0.5, 0.999]), ``parameterisation`` (``softmax`` | ``quad``),
    plus Flower FedAvg's ``fraction_train``, ``fraction_evaluate``. Injected:
    ``model_factory`` and ``proxy_data`` (both required), ``seed``, ``device``,
    ``num_clients``.

    After each aggregation ``client_metrics`` holds ``{node_id: {"lambda": λ_i}}``
    and the MetricRecord returned by :meth:`aggregate_train` carries ``gamma``
    (γ) and ``server_loss`` (mean proxy loss of the last server epoch) besides
    the clients' aggregated train metrics.
    """

    def __init__(
        self,
        *,
        server_epochs: int = 20,
        server_lr: float = 0.01,
        batch_size: int = 128,
        betas: Sequence[float] = (0.5, 0.999),
        parameterisation: str = "softmax",
        model_factory: Callable[[], torch.nn.Module] | None = None,
        proxy_data: tuple[np.ndarray, np.ndarray] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.settings = ServerSettings(
            server_epochs=server_epochs,
            server_lr=float(server_lr),
            batch_size=batch_size,
            betas=_pair(betas),
            parameterisation=parameterisation,
        )
        _check_settings(self.settings)
        if model_factory is None:
            raise ValueError("FedLAW needs the run's model (model_factory): add a [model] table")
        if proxy_data is None:
            raise ValueError("FedLAW needs a server proxy set (proxy_data)")
        self.proxy_data = _check_proxy(proxy_data)
        self._server_model = ServerModel(model_factory, self.device)
        self._proxy: tuple[torch.Tensor, torch.Tensor] | None = None
        self._server_metrics: dict[str, float] = {}

    def _proxy_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._proxy is None:
            x, y = self.proxy_data
            self._proxy = (torch.tensor(x, device=self.device), torch.tensor(y, device=self.device))
        return self._proxy

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: aggregate as the base class does, then add γ to the metrics."""
        self._server_metrics = {}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or not self._server_metrics:
            return arrays, metrics
        return arrays, MetricRecord({**(metrics or {}), **self._server_metrics})

    def server_update(
        self,
        server_round: int,
        global_vector: torch.Tensor,
        client_vectors: torch.Tensor,
        node_ids: list[int],
        num_examples: np.ndarray,
    ) -> torch.Tensor | None:
        if not node_ids:
            return None
        assert self._global is not None
        model, split = self._server_model.of(Layout.of(self._global))
        p = torch.as_tensor(
            size_weights(num_examples), dtype=client_vectors.dtype, device=self.device
        )
        theta0 = initial_theta(p, self.settings.parameterisation)
        model_seed = int(
            seed_sequence(self.seed, "fedlaw-model", server_round).generate_state(1)[0]
        )
        with _seeded_torch_rng(self.device, model_seed):
            fit = fit_theta(
                model,
                split,
                client_vectors,
                theta0,
                split.buffers(global_vector),
                self._proxy_tensors(),
                self.settings,
                torch_generator(self.seed, "fedlaw", server_round),
            )
        with torch.no_grad():
            new_vector = split.with_buffers(
                aggregate(fit.theta, client_vectors, self.settings.parameterisation), fit.buffers
            )
            gamma, lam = coefficients(fit.theta, self.settings.parameterisation)
        self.client_metrics = {
            node: {LAMBDA_KEY: float(value)}
            for node, value in zip(node_ids, lam.tolist(), strict=True)
        }
        self._server_metrics = {GAMMA_KEY: float(gamma)}
        if fit.epoch_losses:
            self._server_metrics[SERVER_LOSS_KEY] = fit.epoch_losses[-1]
        return new_vector
