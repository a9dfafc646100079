"""The model zoo: the ``[model]`` table of a scenario turned into a ``torch.nn.Module``.

A scenario names either a built-in model (``name = "resnet20"`` plus its options) or a
factory in a user file (``factory = "models.py:make_model"`` plus its keyword arguments).
Every model is built from the data's ``input_shape`` and ``num_classes`` alone, so one
scenario works on 1-D signals ``(C, L)``, images ``(C, H, W)`` and flat features ``(D,)``.

The initial weights depend only on the scenario seed: the model is built inside
:func:`torch.random.fork_rng` with the CPU generator seeded from the ``"model-init"``
stream, so the driver and every Ray actor build the same model and the process-wide
torch RNG is left as it was.

Built-in models:

- ``logreg``: multinomial logistic regression (one linear layer).
- ``mlp``: fully connected ReLU network.
- ``lenet5``: LeCun et al. 1998, "Gradient-based learning applied to document
  recognition" (ReLU and max-pooling in place of the original squashing and subsampling).
- ``fedau-cnn``: the CNN of FedAU (Wang & Ji, "A Lightweight Method for Tackling Unknown
  Participation Statistics in Federated Averaging", https://arxiv.org/abs/2306.03401;
  reference code github.com/IBM/fedau, ``model/cnn_cifar10.py``).
- ``resnet20``: He et al., "Deep Residual Learning for Image Recognition",
  https://arxiv.org/abs/1512.03385, the CIFAR variant of section 4.2.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.errors import ScenarioError
from fedsim.options import Options
from fedsim.plugins import load_object
from fedsim.seeding import torch_generator

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "trainable_state_keys",
    "xavier_init_",
]

MODEL_NAMES: tuple[str, ...] = ("logreg", "mlp", "lenet5", "fedau-cnn", "resnet20")
NORMS: tuple[str, ...] = ("batch", "group", "none")
INIT_PURPOSE = "model-init"
_SPATIAL_SHAPES = "(D,), (C, L) or (C, H, W)"


# --------------------------------------------------------------------------- public API


def build_model(
    spec: Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    source: str | Path,
    base_dir: Path,
) -> nn.Module:
    """The model of a scenario's ``[model]`` table, its weights drawn from ``seed``.

    >>> model = build_model({"name": "logreg"}, input_shape=(64,), num_classes=10,
    ...                     seed=0, source="run.toml", base_dir=Path("."))
    >>> model(torch.zeros(5, 64)).shape, sum(p.numel() for p in model.parameters())
    (torch.Size([5, 10]), 650)
    """
    _check_data_shape(input_shape, num_classes)
    has_name, has_factory = "name" in spec, "factory" in spec
    if has_name == has_factory:
        raise ScenarioError(source, "model", "exactly one of name or factory", got=sorted(spec))
    options = {key: value for key, value in spec.items() if key not in ("name", "factory")}
    if has_factory:
        make = _factory_call(spec["factory"], options, input_shape, num_classes, source, base_dir)
    else:
        make = _builtin_call(spec["name"], options, input_shape, num_classes, source)
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also reseed every CUDA device.
        torch.default_generator.manual_seed(torch_generator(seed, INIT_PURPOSE).initial_seed())
        return make()


def xavier_init_(model: nn.Module, generator: torch.Generator) -> None:
    """Xavier-uniform weights and zero biases for every Linear and Conv layer, in place.

    Other parameters (norm affine) keep their values. Used where each node of a
    decentralised run draws its own initialisation (Tian et al. 2024).

    >>> layer = nn.Linear(3, 2)
    >>> xavier_init_(layer, torch.Generator().manual_seed(0))
    >>> layer.bias.tolist(), bool(layer.weight.abs().max() <= (6 / 5) ** 0.5)
    ([0.0, 0.0], True)
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def trainable_state_keys(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys of trainable parameters, in ``state_dict`` order.

    Weights, biases and norm affine parameters are in; buffers (BatchNorm running
    statistics, ``num_batches_tracked``) and frozen parameters are out.

    >>> trainable_state_keys(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    state = model.state_dict(keep_vars=True)
    return [k for k, v in state.items() if isinstance(v, nn.Parameter) and v.requires_grad]


# --------------------------------------------------------------------------- validation


def _check_data_shape(input_shape: tuple[int, ...], num_classes: int) -> None:
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be non-empty and positive, got {input_shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


_OPTIONS: dict[str, tuple[str, ...]] = {
    "logreg": (),
    "mlp": ("hidden",),
    "lenet5": (),
    "fedau-cnn": ("hidden",),
    "resnet20": ("norm", "groups"),
}
_GROUPS = (1, 2, 4, 8, 16)  # divisors of 16, the narrowest ResNet-20 stage


def _builtin_call(
    name: object,
    table: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    source: str | Path,
) -> Callable[[], nn.Module]:
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise ScenarioError(source, "model.name", "one of " + ", ".join(MODEL_NAMES), got=name)
    opts = Options(table, source=source, prefix="model")
    opts.only(_OPTIONS[name], f"an option of model '{name}' ({{known}})", none="none besides name")
    shape = tuple(int(d) for d in input_shape)
    if name == "logreg":
        return lambda: MLP(shape, num_classes, hidden=[])
    if name == "mlp":
        hidden = opts.int_list("hidden", [200, 200])
        return lambda: MLP(shape, num_classes, hidden)
    if len(shape) > 3:
        expected = f"a model for inputs of shape {_SPATIAL_SHAPES} (the data's is {shape})"
        raise ScenarioError(source, "model.name", expected, got=name)
    if name == "lenet5":
        return lambda: LeNet5(shape, num_classes)
    if name == "fedau-cnn":
        head = opts.int_list("hidden", [256, 64])
        return lambda: FedAUCNN(shape, num_classes, head)
    norm = opts.choice("norm", "batch", NORMS)
    if "groups" in table and norm != "group":
        raise opts.fail("norm", '"group" when groups is set', norm)
    groups = opts.choice("groups", 2, _GROUPS)
    return lambda: ResNet20(shape, num_classes, norm=norm, groups=groups)


def _factory_call(
    factory: object,
    options: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    source: str | Path,
    base_dir: Path,
) -> Callable[[], nn.Module]:
    if callable(factory):  # passed as an object by a script (fedsim.Scenario.with_objects)
        make = factory
        factory = str(getattr(factory, "__qualname__", type(factory).__name__))
    elif not isinstance(factory, str):
        raise ScenarioError(source, "model.factory", '"path/to/file.py:name"', got=factory)
    else:
        make = load_object(factory, base_dir=base_dir, source=source, key="model.factory")
    if not callable(make):
        raise ScenarioError(source, "model.factory", "a callable", got=factory)
    kwargs = _factory_kwargs(make, factory, options, input_shape, num_classes, source)

    def call() -> nn.Module:
        try:
            model = make(**kwargs)
        except Exception as error:
            expected = f"a factory that builds a model ({type(error).__name__}: {error})"
            raise ScenarioError(source, "model.factory", expected, got=factory) from error
        if not isinstance(model, nn.Module):
            expected = f"{factory} to return a torch.nn.Module"
            raise ScenarioError(source, "model.factory", expected, got=type(model).__name__)
        return model

    return call


def _factory_kwargs(
    make: Callable[..., Any],
    factory: str,
    options: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    source: str | Path,
) -> dict[str, Any]:
    """The keyword arguments ``make`` takes: the data's shape and classes, then the options.

    ``input_shape`` and ``num_classes`` are passed only when ``make`` names them (or has
    ``**kwargs``); a table option that ``make`` does not take is an error, as is a
    parameter without default that nothing supplies.
    """
    params = inspect.signature(make).parameters
    by_keyword = {
        name: p
        for name, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in options:
        if key in ("input_shape", "num_classes"):
            raise ScenarioError(source, f"model.{key}", f"no {key} key (fedsim passes the data's)")
        if key not in by_keyword and not open_ended:
            known = ", ".join(n for n in by_keyword if n not in ("input_shape", "num_classes"))
            raise ScenarioError(
                source, f"model.{key}", f"an argument of {factory} ({known or 'none'})"
            )
    data = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    kwargs = {k: v for k, v in data.items() if open_ended or k in by_keyword}
    kwargs.update(options)
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        if required and name not in kwargs:
            raise ScenarioError(
                source, f"model.{name}", f"a value ({factory} has no default for it)"
            )
    return kwargs


# --------------------------------------------------------------------------- building blocks


def _conv_input(input_shape: tuple[int, ...]) -> tuple[nn.Module, int, tuple[int, ...]]:
    """Layer that makes a conv input of ``input_shape``, its channels and spatial sides.

    Flat features ``(D,)`` are read as a one-channel sequence ``(1, D)``.
    """
    if len(input_shape) == 1:
        return nn.Unflatten(1, (1, input_shape[0])), 1, input_shape
    return nn.Identity(), input_shape[0], input_shape[1:]


def _conv(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(*args, **kwargs)


def _max_pool(dims: int) -> nn.Module:
    # Rounding up keeps odd and tiny sides alive; on even sides it equals the usual floor.
    return (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(2, 2, ceil_mode=True)


def _pooled(side: int) -> int:
    return (side + 1) // 2


def _kaiming_relu_(modules: Sequence[nn.Module]) -> None:
    with torch.no_grad():
        for module in modules:
            if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _mlp_head(in_features: int, hidden: Sequence[int], num_classes: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return [*layers, nn.Linear(in_features, num_classes)]


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    """Flatten, then Linear+ReLU per hidden width, then a Linear to the classes.

    ``hidden=[]`` is multinomial logistic regression (``logreg``).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int]):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), *_mlp_head(math.prod(input_shape), hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """conv 5×5 (6) → pool → conv 5×5 (16) → pool → fc 120 → fc 84 → classes, ReLU.

    Sizing rule per spatial side: the first conv pads by 2 when the side is below 32
    (LeCun's 28×28 digits in a 32×32 field), the second pads by 2 when its input side
    is below 10, and pooling rounds up. 32×32 and 28×28 inputs thus give the classic
    16×5×5 = 400 features; 8×8 digits give 16×2×2 = 64; any side ≥ 1 works.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        prepare, channels, sides = _conv_input(input_shape)
        dims = len(sides)
        pad1 = tuple(2 if s < 32 else 0 for s in sides)
        sides = tuple(_pooled(s + 2 * p - 4) for s, p in zip(sides, pad1, strict=True))
        pad2 = tuple(2 if s < 10 else 0 for s in sides)
        sides = tuple(_pooled(s + 2 * p - 4) for s, p in zip(sides, pad2, strict=True))
        self.features = nn.Sequential(
            prepare,
            _conv(dims, channels, 6, 5, padding=pad1),
            nn.ReLU(),
            _max_pool(dims),
            _conv(dims, 6, 16, 5, padding=pad2),
            nn.ReLU(),
            _max_pool(dims),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(*_mlp_head(16 * math.prod(sides), [120, 84], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FedAUCNN(nn.Module):
    """FedAU's CNN: two (conv 3×3, 32 channels, padding 1, ReLU, max-pool 2) then an MLP head.

    As in the reference (``model/cnn_cifar10.py``): stride 1, padding 1, Kaiming-normal
    weights and zero biases on the convs and hidden linear layers, PyTorch's default on
    the output layer. CIFAR-10 (3×32×32): 2048 → 256 → 64 → 10. The reference's MNIST
    variant has one hidden layer of 128 (``hidden = [128]``).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int]):
        super().__init__()
        prepare, channels, sides = _conv_input(input_shape)
        dims = len(sides)
        self.features = nn.Sequential(
            prepare,
            _conv(dims, channels, 32, 3, padding=1),
            nn.ReLU(),
            _max_pool(dims),
            _conv(dims, 32, 32, 3, padding=1),
            nn.ReLU(),
            _max_pool(dims),
            nn.Flatten(),
        )
        flat = 32 * math.prod(_pooled(_pooled(s)) for s in sides)
        self.classifier = nn.Sequential(*_mlp_head(flat, hidden, num_classes))
        _kaiming_relu_([*self.features, *list(self.classifier)[:-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _norm(kind: str, dims: int, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 convs with a parameter-free shortcut (He et al. 2016, option A).

    When the block halves the resolution and doubles the channels, the shortcut takes
    every other position and pads the new channels with zeros.
    """

    def __init__(
        self, dims: int, in_channels: int, channels: int, stride: int, norm: str, groups: int
    ):
        super().__init__()
        bias = norm == "none"
        self.conv1 = _conv(dims, in_channels, channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = _norm(norm, dims, channels, groups)
        self.conv2 = _conv(dims, channels, channels, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, dims, channels, groups)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[(slice(None), slice(None), *[slice(None, None, self.stride)] * (x.dim() - 2))]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: conv 3×3 (16), 3 stages × 3 basic blocks (16/32/64), pool, fc.

    ``norm`` is ``"batch"`` (the paper), ``"group"`` (GroupNorm with ``groups`` groups,
    common in federated learning, where BatchNorm statistics differ across clients) or
    ``"none"`` (convs get biases instead). Convs are Kaiming-normal (fan-out) initialised.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        norm: str = "batch",
        groups: int = 2,
    ):
        super().__init__()
        prepare, channels, sides = _conv_input(input_shape)
        dims = len(sides)
        bias = norm == "none"
        self.stem = nn.Sequential(
            prepare,
            _conv(dims, channels, 16, 3, padding=1, bias=bias),
            _norm(norm, dims, 16, groups),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        in_channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for index in range(3):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(dims, in_channels, width, stride, norm, groups))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.pool = nn.Sequential(pool, nn.Flatten())
        self.fc = nn.Linear(64, num_classes)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.modules.conv._ConvNd):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))
