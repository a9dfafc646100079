"""Local training and evaluation kernels: one client at a time, or a cohort at once.

Everything that turns a model and a client's data into a trained model or a score lives
here, shared by fedsim's ClientApp, the server's central evaluation and the benchmark's
plain loop, so all of them do exactly the same arithmetic.

Sequential kernels (:func:`local_sgd`, :func:`evaluate_arrays`) follow the FedAU
reference: plain SGD (optionally with momentum and weight decay) over a per-client data
stream that persists across rounds (:func:`round_batches`).

Cohort kernels (:func:`cohort_sgd`, :func:`cohort_evaluate`) train or score K clients'
models as one: each parameter is stacked along a leading client dimension and one
``torch.func.vmap`` of ``grad`` over ``functional_call`` runs a local step of every client
in one forward and backward. Uneven clients fit one shape through masks, never special
cases: a short last batch is padded and the masked mean over its real examples is the
sequential mean; a client with fewer steps takes masked no-op steps that leave its
parameters and momentum untouched. The results equal the sequential kernels' up to
float32 rounding (batched matrix products sum in another order, about 1e-8 relative);
with ReLU models a unit whose input sits that close to 0 can flip, so compare those on
losses and accuracies, not bitwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedsim.seeding import rng

# ----------------------------------------------------------------------- data streams


def stream_batches(
    num_examples: int,
    batch_size: int,
    num_steps: int,
    *,
    seed: int,
    client: int,
    epoch: int,
    position: int,
) -> tuple[list[np.ndarray], int, int]:
    """The next ``num_steps`` minibatches of a client's persistent data stream.

    Each epoch is one permutation of the client's examples, drawn from
    ``rng(seed, "data-stream", client, epoch)``; the last batch of an epoch may be
    short. Returns the batches and the stream's new (epoch, position).

    >>> batches, epoch, position = stream_batches(5, 2, 4, seed=0, client=0, epoch=0, position=0)
    >>> [len(b) for b in batches], epoch, position
    ([2, 2, 1, 2], 1, 2)
    """
    batches: list[np.ndarray] = []
    order = rng(seed, "data-stream", client, epoch).permutation(num_examples)
    for _ in range(num_steps):
        if position >= num_examples:
            epoch, position = epoch + 1, 0
            order = rng(seed, "data-stream", client, epoch).permutation(num_examples)
        batches.append(order[position : position + batch_size])
        position += batch_size
    return batches, epoch, position


def round_batches(
    client: int,
    num_examples: int,
    epoch: int,
    position: int,
    *,
    local_steps: int | None,
    local_epochs: int | None,
    batch_size: int,
    seed: int,
) -> tuple[list[np.ndarray], int, int]:
    """This round's minibatches of ``client`` given its stream state (epoch, position).

    ``local_steps`` continues the stream where the last round left it; otherwise a round
    is ``local_epochs`` fresh epochs. Returns the batches and the new state.

    >>> batches, epoch, position = round_batches(
    ...     0, 5, 0, 1, local_steps=None, local_epochs=1, batch_size=2, seed=0)
    >>> [len(b) for b in batches], epoch, position
    ([2, 2, 1], 1, 6)
    """
    if local_steps is not None:
        num_steps = local_steps
    else:
        num_steps = (local_epochs or 1) * math.ceil(num_examples / batch_size)
        if position:
            epoch, position = epoch + 1, 0
    if not num_examples:
        return [], epoch, position
    return stream_batches(
        num_examples,
        batch_size,
        num_steps,
        seed=seed,
        client=client,
        epoch=epoch,
        position=position,
    )


def local_sgd(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    batches: list[np.ndarray],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
) -> np.ndarray:
    """SGD over ``batches`` (index arrays into ``x``, ``y``); returns the float64 step losses.

    The client's data and every batch's indices go to the device once, and the losses
    stay there until the end, so a GPU never waits for the host inside the loop.
    """
    if not batches:
        return np.zeros(0)
    x_all = torch.from_numpy(np.array(x)).to(device)
    y_all = torch.from_numpy(np.array(y)).to(device)
    order = torch.from_numpy(np.concatenate(batches)).to(device)
    bounds = np.cumsum([0] + [len(batch) for batch in batches]).tolist()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    model.train()
    losses = []
    for start, end in itertools.pairwise(bounds):
        index = order[start:end]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x_all[index]), y_all[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).cpu().numpy().astype(np.float64)


@torch.no_grad()
def evaluate_arrays(
    model: torch.nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    ``x`` and ``y`` may already be tensors on ``device`` (a test set kept there); the
    sums stay on the device until the end (one synchronisation, not two a batch), in
    float64 as Python's own sums were.
    """
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(y), batch_size):
        xb = _batch(x, start, batch_size, device)
        yb = _batch(y, start, batch_size, device)
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb, reduction="sum")
        total_loss += loss.double()
        correct += (logits.argmax(dim=1) == yb).sum()
    count = max(len(y), 1)
    return float(total_loss) / count, int(correct) / count


def _batch(
    values: np.ndarray | torch.Tensor, start: int, size: int, device: torch.device
) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values[start : start + size].to(device)
    return torch.from_numpy(np.array(values[start : start + size])).to(device)


# ----------------------------------------------------------------------- cohorts

Stacked = dict[str, torch.Tensor]  # state_dict name -> tensor with a leading client dim


@dataclass(frozen=True)
class CohortSteps:
    """The minibatches of a cohort as rectangular arrays, rows of the cohort's data.

    ``index[s, k, b]``: row of example ``b`` of client ``k``'s step ``s`` (0 where padded);
    ``mask[s, k, b]``: 1 for a real example, 0 for padding; ``active[s, k]``: whether
    client ``k`` has a step ``s`` at all.

    >>> steps = CohortSteps.of([[np.array([1, 0]), np.array([2])], []], starts=[10, 20])
    >>> steps.index.tolist(), steps.active.tolist()
    ([[[11, 10], [0, 0]], [[12, 0], [0, 0]]], [[True, False], [True, False]])
    >>> steps.mask.tolist()
    [[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]
    """

    index: np.ndarray
    mask: np.ndarray
    active: np.ndarray

    @classmethod
    def of(cls, batches: Sequence[Sequence[np.ndarray]], starts: Sequence[int]) -> CohortSteps:
        """``batches[k]``: client ``k``'s index arrays into its own rows, which begin at
        row ``starts[k]`` of the cohort's data."""
        num_steps = max((len(b) for b in batches), default=0)
        width = max((len(batch) for b in batches for batch in b), default=0)
        index = np.zeros((num_steps, len(batches), width), dtype=np.int64)
        mask = np.zeros((num_steps, len(batches), width), dtype=np.float32)
        active = np.zeros((num_steps, len(batches)), dtype=bool)
        for k, client_batches in enumerate(batches):
            for s, batch in enumerate(client_batches):
                index[s, k, : len(batch)] = np.asarray(batch) + starts[k]
                mask[s, k, : len(batch)] = 1.0
                active[s, k] = True
        return cls(index, mask, active)


def vectorisation_problem(model: nn.Module, example: torch.Tensor) -> str | None:
    """Why ``model`` cannot be trained as a cohort, or None when it can.

    ``example``: one input batch of the model's shape (two examples suffice). Running
    statistics (BatchNorm) are state a cohort cannot keep per client; anything else that
    ``vmap`` refuses (in-place buffer updates, data-dependent control flow, random ops
    such as dropout) shows in a trial step on two stacked copies of the model.

    >>> vectorisation_problem(nn.Linear(3, 2), torch.zeros(2, 3)) is None
    True
    >>> vectorisation_problem(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), torch.zeros(2, 3))
    'BatchNorm1d keeps running statistics'
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return f"{type(module).__name__} keeps running statistics"
    try:
        state = stack_states([model.state_dict()] * 2)
        x = example.unsqueeze(0).expand(2, *example.shape)
        labels = torch.zeros((2, example.shape[0]), dtype=torch.long, device=example.device)
        mask = torch.ones(labels.shape, device=example.device)
        _gradients(model, state, trainable(model), x, labels, mask)
    except Exception as error:  # whatever vmap or the model raises: the reason to fall back
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"{type(error).__name__}: {first_line}"[:300]
    return None


def slower_as_cohort(model: nn.Module, device: torch.device) -> str | None:
    """Why ``engine.cohort = "auto"`` trains ``model`` one client at a time on ``device``
    although it could be vectorised, or None.

    On a CPU, a 2-D or 3-D convolution of stacked models runs as one grouped convolution,
    which PyTorch's CPU kernels compute more slowly than the clients' convolutions one
    after another (measured on 2 cores, 10 clients, 5 steps of 10 images 3x32x32: fedau-cnn
    1.74x the sequential time on one thread and 1.46x on two, lenet5 1.21x and 0.81x;
    1-D convolutions and linear layers gain: fedau-cnn on 1x40 signals 0.52x, an MLP
    0.60x, on one thread). An explicit ``engine.cohort = N`` trains such models in
    cohorts anyway.

    >>> slower_as_cohort(nn.Conv2d(1, 1, 3), torch.device("cpu")).split(" (")[0]
    'auto: Conv2d trains faster one client at a time on the CPU'
    >>> slower_as_cohort(nn.Conv2d(1, 1, 3), torch.device("cuda")) is None
    True
    """
    if device.type != "cpu":
        return None
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            return (
                f"auto: {type(module).__name__} trains faster one client at a time on the CPU "
                "(set engine.cohort to a number to force cohorts)"
            )
    return None


def trainable(model: nn.Module) -> list[str]:
    """The state_dict names that SGD updates (parameters with ``requires_grad``)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict(keep_vars=True)
    return [name for name, value in state.items() if id(value) in names]


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> Stacked:
    """Per-client state dicts stacked along a new leading dimension (detached copies)."""
    return {name: torch.stack([s[name].detach() for s in states]) for name in states[0]}


def _forward(model: nn.Module) -> Callable[[Stacked, torch.Tensor], torch.Tensor]:
    def forward(state: Stacked, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, state, (x,))

    return forward


def _gradients(
    model: nn.Module,
    state: Stacked,
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Every client's gradient of its masked mean cross-entropy, and the losses (K,).

    The forward is vmapped over the clients; the backward is one ordinary backward of
    the sum of the clients' losses, since client k's loss depends on its own slice of
    the stacked parameters only (a ``vmap`` of ``grad`` gives the same numbers with
    more per-step overhead). A parameter the loss does not use gets None, and SGD leaves
    it alone, as ``torch.optim.SGD`` does."""
    params = [state[name].detach().requires_grad_() for name in names]
    with torch.enable_grad():
        logits = vmap(_forward(model))({**state, **dict(zip(names, params, strict=True))}, x)
        per_example = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        masked = per_example.view_as(mask) * mask
        losses = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
    return list(grads), losses.detach()


def cohort_sgd(
    model: nn.Module,
    state: Stacked,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: CohortSteps,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> np.ndarray:
    """Local SGD of every client of a cohort at once; ``state`` is updated in place.

    ``state``: the cohort's stacked state dicts (on the device); ``x``, ``y``: the rows of
    the cohort's data, indexed by ``steps``. Each client's step is ``torch.optim.SGD``'s
    (weight decay added to the gradient, momentum buffer started at the first gradient,
    no dampening), and a client without a step ``s`` is left as it was. Returns the step
    losses, float64 ``(steps, clients)``, NaN where a client had no step.
    """
    num_steps, num_clients = steps.active.shape
    if num_steps == 0:
        return np.zeros((0, num_clients))
    names = trainable(model)
    device = x.device
    index = torch.from_numpy(steps.index).to(device)
    mask = torch.from_numpy(steps.mask).to(device)
    active = torch.from_numpy(steps.active).to(device)
    buffers = {name: torch.zeros_like(state[name]) for name in names} if momentum else {}
    model.train()
    losses = []
    for s in range(num_steps):
        grads, step_loss = _gradients(model, state, names, x[index[s]], y[index[s]], mask[s])
        used = [(name, grad) for name, grad in zip(names, grads, strict=True) if grad is not None]
        with torch.no_grad():
            keep = None if steps.active[s].all() else active[s]
            _sgd_step(
                keep,
                state,
                [grad for _, grad in used],
                buffers,
                [name for name, _ in used],
                (lr, momentum, weight_decay),
            )
        losses.append(step_loss.detach())
    out = torch.stack(losses).cpu().numpy().astype(np.float64)
    out[~steps.active] = np.nan
    return out


def _sgd_step(
    keep: torch.Tensor | None,
    state: Stacked,
    grads: list[torch.Tensor],
    buffers: Stacked,
    names: list[str],
    hyper: tuple[float, float, float],
) -> None:
    """``torch.optim.SGD``'s step (``hyper``: lr, momentum, weight decay), in place, for
    every client (``keep`` None: a few fused kernels in all) or for the clients in
    ``keep`` only, the others keeping their parameters and momentum (a masked no-op)."""
    lr, momentum, weight_decay = hyper
    params = [state[name] for name in names]
    if keep is None:
        steps = grads  # fresh tensors of this step: safe to edit
        if weight_decay:
            torch._foreach_add_(steps, params, alpha=weight_decay)
        if momentum:
            velocity = [buffers[name] for name in names]
            torch._foreach_mul_(velocity, momentum)
            torch._foreach_add_(velocity, steps)
            steps = velocity
        torch._foreach_add_(params, steps, alpha=-lr)
        return
    for name, param, grad in zip(names, params, grads, strict=True):
        if weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        if momentum:
            buffer = buffers[name].mul(momentum).add_(grad)
            buffers[name] = _where(keep, buffer, buffers[name])
            grad = buffer
        state[name] = _where(keep, param.add(grad, alpha=-lr), param)


def _where(keep: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` for the clients in ``keep`` (a (K,) bool tensor), ``old`` for the others."""
    return torch.where(keep.view(-1, *([1] * (new.dim() - 1))), new, old)


@torch.no_grad()
def cohort_evaluate(
    model: nn.Module, state: Stacked, x: torch.Tensor, y: torch.Tensor, steps: CohortSteps
) -> tuple[np.ndarray, np.ndarray]:
    """Summed cross-entropy and number of correct predictions per client, float64 (K,).

    ``steps`` are evaluation batches (:func:`evaluation_batches`); each batch's loss is
    summed in float32 and the batches are added in float64, as :func:`evaluate_arrays`.
    """
    num_clients = steps.active.shape[1]
    total = np.zeros(num_clients)
    correct = np.zeros(num_clients)
    if steps.active.shape[0] == 0:
        return total, correct
    device = x.device
    index = torch.from_numpy(steps.index).to(device)
    mask = torch.from_numpy(steps.mask).to(device)
    forward = vmap(_forward(model))
    model.eval()
    losses, hits = [], []
    for s in range(steps.active.shape[0]):
        logits = forward(state, x[index[s]])
        labels = y[index[s]]
        per_example = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        losses.append((per_example.view_as(mask[s]) * mask[s]).sum(dim=1))
        hits.append(((logits.argmax(dim=2) == labels) * mask[s]).sum(dim=1))
    total = torch.stack(losses).cpu().numpy().astype(np.float64).sum(axis=0)
    correct = torch.stack(hits).cpu().numpy().astype(np.float64).sum(axis=0)
    return total, correct


def evaluation_batches(num_examples: int, batch_size: int) -> list[np.ndarray]:
    """A client's evaluation batches: its examples in order, ``batch_size`` at a time.

    >>> [b.tolist() for b in evaluation_batches(5, 2)]
    [[0, 1], [2, 3], [4]]
    """
    return [
        np.arange(start, min(start + batch_size, num_examples))
        for start in range(0, num_examples, batch_size)
    ]


def cohort_bytes_per_client(model: nn.Module, example: torch.Tensor) -> int:
    """About how many bytes one more client adds to a training cohort.

    ``example``: one input batch of the cohort's batch size. Per client: its stacked state,
    gradient, momentum and update (4 copies of the model) and the activations a forward
    keeps for the backward (every module's output, counted on ``example``, about 3 times:
    the activation, its gradient and the vmap's temporaries).
    """
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    activation_bytes = [0]

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            activation_bytes[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return 4 * model_bytes + 3 * activation_bytes[0] + example.numel() * example.element_size()


def cohort_capacity(bytes_per_client: int, memory_mb: float, limit: int | None = None) -> int:
    """How many clients fit one cohort in ``memory_mb``, at most ``limit`` (at least 1).

    >>> cohort_capacity(10 << 20, 100), cohort_capacity(10 << 20, 100, limit=4)
    (10, 4)
    """
    fits = max(1, int(memory_mb * (1 << 20) // max(bytes_per_client, 1)))
    return fits if limit is None else min(fits, limit)


__all__ = [
    "CohortSteps",
    "cohort_bytes_per_client",
    "cohort_capacity",
    "cohort_evaluate",
    "cohort_sgd",
    "evaluate_arrays",
    "evaluation_batches",
    "local_sgd",
    "round_batches",
    "slower_as_cohort",
    "stream_batches",
    "trainable",
    "vectorisation_problem",
]
