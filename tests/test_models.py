"""The model zoo: shapes, parameter counts, factories, errors, seeding, state keys."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedsim.errors import ScenarioError
from fedsim.models import (
    MODEL_NAMES,
    ResNet20,
    build_model,
    trainable_state_keys,
    xavier_init_,
)

SOURCE = "run.toml"
SHAPES = [(60,), (1, 40), (3, 17), (1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 5, 3)]


def build(spec: dict[str, Any], shape: tuple[int, ...] = (3, 32, 32), **kw: Any) -> nn.Module:
    kw.setdefault("num_classes", 10)
    kw.setdefault("seed", 0)
    kw.setdefault("base_dir", Path("."))
    return build_model(spec, input_shape=shape, source=SOURCE, **kw)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def error_of(spec: dict[str, Any], shape: tuple[int, ...] = (3, 32, 32), **kw: Any) -> str:
    with pytest.raises(ScenarioError) as info:
        build(spec, shape, **kw)
    return str(info.value)


def inputs(shape: tuple[int, ...], batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- forward shapes


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_gives_batch_by_classes(name: str, shape: tuple[int, ...]) -> None:
    model = build({"name": name}, shape, num_classes=7)
    out = model(inputs(shape))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("shape", [(1, 40), (3, 32, 32), (60,)], ids=str)
def test_resnet20_every_norm_and_rank(norm: str, shape: tuple[int, ...]) -> None:
    model = build({"name": "resnet20", "norm": norm}, shape, num_classes=4)
    assert model(inputs(shape, batch=2)).shape == (2, 4)


def test_conv_models_use_conv1d_for_sequences_and_flat_features() -> None:
    for name in ("lenet5", "fedau-cnn", "resnet20"):
        for shape in [(1, 40), (60,)]:
            convs = [m for m in build({"name": name}, shape).modules() if isinstance(m, nn.Conv1d)]
            assert convs and convs[0].in_channels == 1
        images = build({"name": name}, (3, 32, 32)).modules()
        assert not any(isinstance(m, nn.Conv1d) for m in images)


# --------------------------------------------------------------------------- parameter counts


def test_logreg_parameter_count() -> None:
    # 64 features → 10 classes: 64·10 weights + 10 biases.
    assert num_params(build({"name": "logreg"}, (64,))) == 650
    # A (1, 8, 8) image is flattened to the same 64 features.
    assert num_params(build({"name": "logreg"}, (1, 8, 8))) == 650


def test_mlp_parameter_counts() -> None:
    # Default hidden [200, 200]: (64·200 + 200) + (200·200 + 200) + (200·10 + 10).
    assert num_params(build({"name": "mlp"}, (64,))) == 13_000 + 40_200 + 2_010
    # (2, 3) flattened to 6: (6·5 + 5) + (5·4 + 4).
    assert num_params(build({"name": "mlp", "hidden": [5]}, (2, 3), num_classes=4)) == 59
    # No hidden layer is logistic regression.
    assert num_params(build({"name": "mlp", "hidden": []}, (64,))) == 650


def test_fedau_cnn_matches_the_reference_cifar10_model() -> None:
    model = build({"name": "fedau-cnn"}, (3, 32, 32))
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(2048, 256), (256, 64), (64, 10)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.padding, c.out_channels) for c in convs] == [((3, 3), (1, 1), 32)] * 2
    # convs (3·32·9 + 32) + (32·32·9 + 32), head 2048·256+256, 256·64+64, 64·10+10
    assert num_params(model) == 896 + 9_248 + 524_544 + 16_448 + 650
    # The reference MNIST model: 7·7·32 = 1568 → 128 → 10.
    mnist = build({"name": "fedau-cnn", "hidden": [128]}, (1, 28, 28))
    assert [m.in_features for m in mnist.modules() if isinstance(m, nn.Linear)] == [1568, 128]


def test_fedau_cnn_reference_init_zero_biases_but_default_output_layer() -> None:
    model = build({"name": "fedau-cnn"}, (3, 32, 32))
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    biases = [m.bias for m in layers if m.bias is not None]
    assert len(biases) == 5
    assert all(torch.count_nonzero(b) == 0 for b in biases[:-1])
    assert torch.count_nonzero(biases[-1]) > 0


@pytest.mark.parametrize(
    ("shape", "features"),
    [((3, 32, 32), 400), ((1, 28, 28), 400), ((1, 8, 8), 64), ((1, 40), 16 * 7)],
    ids=str,
)
def test_lenet5_sizing(shape: tuple[int, ...], features: int) -> None:
    # 32: 28→14→10→5; 28 (pad 2): 28→14→10→5; 8 (pad 2, pad 2): 8→4→4→2; 40: 36→18→14→7.
    model = build({"name": "lenet5"}, shape)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.in_features == features


def test_lenet5_cifar_parameter_count() -> None:
    # (3·6·25+6) + (6·16·25+16) + (400·120+120) + (120·84+84) + (84·10+10)
    assert num_params(build({"name": "lenet5"}, (3, 32, 32))) == 456 + 2_416 + 48_120 + 10_164 + 850


def test_resnet20_structure() -> None:
    model = build({"name": "resnet20"}, (3, 32, 32))
    assert isinstance(model, ResNet20)
    # 0.27M parameters as in He et al. 2016, table 6 (option A shortcuts have none).
    assert num_params(model) == 269_722
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and [c.out_channels for c in convs[::6]] == [16, 16, 32, 64]
    features = model.blocks(model.stem(inputs((3, 32, 32), batch=2)))
    assert features.shape == (2, 64, 8, 8)


def test_resnet20_norm_options() -> None:
    group = build({"name": "resnet20", "norm": "group", "groups": 4})
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 19 and {m.num_groups for m in norms} == {4}
    assert {m.num_groups for m in build({"name": "resnet20", "norm": "group"}).modules()
            if isinstance(m, nn.GroupNorm)} == {2}  # fmt: skip
    plain = build({"name": "resnet20", "norm": "none"})
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_weights_other_seed_other_weights(name: str) -> None:
    a = build({"name": name}, (1, 8, 8), seed=3).state_dict()
    b = build({"name": name}, (1, 8, 8), seed=3).state_dict()
    c = build({"name": name}, (1, 8, 8), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_global_torch_rng_is_untouched_and_irrelevant() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(123)
        before = torch.get_rng_state()
        first = build({"name": "mlp"}, (64,), seed=5).state_dict()
        assert torch.equal(torch.get_rng_state(), before)
        torch.default_generator.manual_seed(999)
        second = build({"name": "mlp"}, (64,), seed=5).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


# --------------------------------------------------------------------------- factories


NETS = """
import math
from torch import nn

def make_model(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                         nn.Linear(width, num_classes))

def classes_only(num_classes):
    return nn.Linear(3, num_classes)

class Recorder(nn.Linear):
    def __init__(self, kwargs):
        super().__init__(1, 1)
        self.kwargs = kwargs

def anything(**kwargs):
    return Recorder(kwargs)

def needs_depth(input_shape, depth):
    return nn.Linear(1, depth)

def make_dict(input_shape, num_classes):
    return {"not": "a module"}

def broken():
    raise ValueError("boom")

class Net(nn.Linear):
    def __init__(self, num_classes):
        super().__init__(2, num_classes)

make_three = 3
"""


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "nets.py").write_text(textwrap.dedent(NETS))
    return tmp_path


def factory(nets: Path, name: str, **options: Any) -> nn.Module:
    spec = {"factory": f"models/nets.py:{name}", **options}
    return build(spec, (2, 3), num_classes=5, base_dir=nets)


def test_factory_with_defaults_and_with_options(nets: Path) -> None:
    model = factory(nets, "make_model")
    assert num_params(model) == (6 * 4 + 4) + (4 * 5 + 5)
    assert num_params(factory(nets, "make_model", width=2)) == (6 * 2 + 2) + (2 * 5 + 5)
    assert model(inputs((2, 3))).shape == (3, 5)


def test_factory_signature_filtering(nets: Path) -> None:
    assert factory(nets, "classes_only").out_features == 5  # no input_shape passed
    assert factory(nets, "Net").out_features == 5  # a class works too


def test_factory_with_kwargs_gets_everything(nets: Path) -> None:
    module = factory(nets, "anything", depth=2)
    assert module.kwargs == {"input_shape": (2, 3), "num_classes": 5, "depth": 2}


def test_factory_models_are_seeded(nets: Path) -> None:
    a = factory(nets, "make_model").state_dict()
    b = factory(nets, "make_model").state_dict()
    c = build({"factory": "models/nets.py:make_model"}, (2, 3), num_classes=5, seed=1,
              base_dir=nets).state_dict()  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


FACTORY_ERRORS = [
    ("make_model", {"depth": 2},
     "run.toml: model.depth: expected an argument of models/nets.py:make_model (width)"),
    ("classes_only", {"width": 2},
     "run.toml: model.width: expected an argument of models/nets.py:classes_only (none)"),
    ("make_model", {"num_classes": 3},
     "run.toml: model.num_classes: expected no num_classes key (fedsim passes the data's)"),
    ("needs_depth", {},
     "run.toml: model.depth: expected a value (models/nets.py:needs_depth has no default for it)"),
    ("make_dict", {},
     "run.toml: model.factory: expected models/nets.py:make_dict to return a torch.nn.Module, "
     "got 'dict'"),
    ("broken", {},
     "run.toml: model.factory: expected a factory that builds a model (ValueError: boom), "
     "got 'models/nets.py:broken'"),
    ("make_three", {},
     "run.toml: model.factory: expected a callable, got 'models/nets.py:make_three'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "options", "message"), FACTORY_ERRORS)
def test_factory_errors(nets: Path, name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        factory(nets, name, **options)
    assert str(info.value) == message


def test_factory_path_errors(nets: Path) -> None:
    assert error_of({"factory": 3}) == (
        'run.toml: model.factory: expected "path/to/file.py:name", got 3'
    )
    missing = error_of({"factory": "nets.py:make_model"}, base_dir=nets)
    assert missing == (
        f"run.toml: model.factory: expected an existing file ({nets / 'nets.py'} does not "
        "exist), got 'nets.py:make_model'"
    )


# --------------------------------------------------------------------------- spec errors


SPEC_ERRORS = [
    ({}, "run.toml: model: expected exactly one of name or factory, got []"),
    ({"hidden": [3]}, "run.toml: model: expected exactly one of name or factory, got ['hidden']"),
    ({"name": "mlp", "factory": "m.py:f"},
     "run.toml: model: expected exactly one of name or factory, got ['factory', 'name']"),
    ({"name": "vgg"},
     "run.toml: model.name: expected one of logreg, mlp, lenet5, fedau-cnn, resnet20, got 'vgg'"),
    ({"name": 5},
     "run.toml: model.name: expected one of logreg, mlp, lenet5, fedau-cnn, resnet20, got 5"),
    ({"name": "logreg", "hidden": [3]},
     "run.toml: model.hidden: expected an option of model 'logreg' (none besides name)"),
    ({"name": "lenet5", "norm": "batch"},
     "run.toml: model.norm: expected an option of model 'lenet5' (none besides name)"),
    ({"name": "mlp", "width": 3},
     "run.toml: model.width: expected an option of model 'mlp' (hidden)"),
    ({"name": "resnet20", "depth": 56},
     "run.toml: model.depth: expected an option of model 'resnet20' (norm, groups)"),
    ({"name": "mlp", "hidden": 200},
     "run.toml: model.hidden: expected a list of integers >= 1, got 200"),
    ({"name": "mlp", "hidden": [200, 0]},
     "run.toml: model.hidden: expected a list of integers >= 1, got [200, 0]"),
    ({"name": "mlp", "hidden": [True]},
     "run.toml: model.hidden: expected a list of integers >= 1, got [True]"),
    ({"name": "fedau-cnn", "hidden": ["256"]},
     "run.toml: model.hidden: expected a list of integers >= 1, got ['256']"),
    ({"name": "resnet20", "norm": "layer"},
     'run.toml: model.norm: expected one of "batch", "group", "none", got \'layer\''),
    ({"name": "resnet20", "norm": "group", "groups": 3},
     "run.toml: model.groups: expected one of 1, 2, 4, 8, 16, got 3"),
    ({"name": "resnet20", "norm": "group", "groups": True},
     "run.toml: model.groups: expected one of 1, 2, 4, 8, 16, got True"),
    ({"name": "resnet20", "groups": 4},
     "run.toml: model.norm: expected \"group\" when groups is set, got 'batch'"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), SPEC_ERRORS)
def test_spec_errors(spec: dict[str, Any], message: str) -> None:
    assert error_of(spec) == message


@pytest.mark.parametrize("name", ["lenet5", "fedau-cnn", "resnet20"])
def test_conv_models_refuse_volumes(name: str) -> None:
    assert error_of({"name": name}, (1, 4, 4, 4)) == (
        "run.toml: model.name: expected a model for inputs of shape (D,), (C, L) or (C, H, W) "
        f"(the data's is (1, 4, 4, 4)), got '{name}'"
    )


def test_dense_models_take_any_rank() -> None:
    shape = (1, 4, 4, 4)
    assert build({"name": "mlp", "hidden": [8]}, shape)(inputs(shape)).shape == (3, 10)


# --------------------------------------------------------------------------- state keys


def test_trainable_state_keys_exclude_batchnorm_buffers() -> None:
    model = build({"name": "resnet20"})
    keys = trainable_state_keys(model)
    state = model.state_dict()
    buffers = [k for k in state if k not in keys]
    assert keys == [k for k in state if k in dict(model.named_parameters())]
    assert "stem.2.weight" in keys and "stem.2.bias" in keys  # BatchNorm affine
    assert len(buffers) == 3 * 19 and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in buffers
    )
    group = build({"name": "resnet20", "norm": "group"})
    assert trainable_state_keys(group) == list(group.state_dict())


def test_trainable_state_keys_skip_frozen_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    assert trainable_state_keys(model) == ["0.bias", "1.weight", "1.bias"]


# --------------------------------------------------------------------------- xavier


def xavier_state(seed: int) -> dict[str, torch.Tensor]:
    model = build({"name": "lenet5"}, (1, 8, 8))
    xavier_init_(model, torch.Generator().manual_seed(seed))
    return model.state_dict()


def test_xavier_init_zeroes_biases_and_bounds_weights() -> None:
    model = build({"name": "resnet20", "norm": "none"}, (1, 8, 8))
    xavier_init_(model, torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(layers) == 20
    for layer in layers:
        assert layer.bias is not None and torch.count_nonzero(layer.bias) == 0
        receptive = math.prod(layer.weight.shape[2:])
        fan_in, fan_out = layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive
        assert layer.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))


def test_xavier_init_leaves_norm_affine_alone() -> None:
    model = build({"name": "resnet20"}, (1, 8, 8))
    xavier_init_(model, torch.Generator().manual_seed(0))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


def test_xavier_init_is_deterministic_for_a_seeded_generator() -> None:
    a, b, c = xavier_state(0), xavier_state(0), xavier_state(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.1.weight"], c["features.1.weight"])
