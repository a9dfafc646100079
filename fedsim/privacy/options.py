"""The ``[privacy]`` table of a scenario, read into a frozen :class:`PrivacyConfig`.

It is read with the other common tables (:func:`fedsim.config.scenario_from_dict`)
so that a wrong value stops before anything runs, with the one line the CLI
prints: ``run.toml: privacy.delta: expected a number in (0, 1), got 1.5``.
docs/privacy.md is the reference for every key.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.options import Options

PRIVACY_KEYS = (
    "mode",
    "noise_multiplier",
    "clipping",
    "clip_norm",
    "delta",
    "weighting",
    "accountant",
    "target_quantile",
    "clip_lr",
    "count_stddev",
)
MODES = ("central", "local")
CLIPPINGS = ("fixed", "adaptive")
WEIGHTINGS = ("auto", "participants", "all", "fedau")
ACCOUNTANTS = ("rdp", "pld")
ADAPTIVE_KEYS = ("target_quantile", "clip_lr", "count_stddev")
ADAPTIVE_INITIAL_CLIP = 0.1  # Andrew et al. 2021's initial clip norm


@dataclass(frozen=True)
class PrivacyConfig:
    """A validated ``[privacy]`` table.

    ``mode``: ``central`` (the server clips and noises the aggregate) or ``local``
    (each client clips and noises its own update); ``noise_multiplier`` σ (noise std
    over sensitivity); ``clip_norm`` C (the initial one with adaptive clipping);
    ``weighting``: which rule's sensitivity scales the noise (``auto``: from the
    strategy); ``count_stddev`` None: expected participants / 20 (Andrew et al.).
    """

    mode: str
    noise_multiplier: float
    clipping: str
    clip_norm: float
    delta: float
    weighting: str
    accountant: str
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.clipping == "adaptive"


def read_privacy(reader: Options) -> PrivacyConfig:
    """The ``[privacy]`` table read by ``reader`` (its prefix is ``privacy``).

    >>> from fedsim.options import Options
    >>> read_privacy(Options({"noise_multiplier": 1.0, "clip_norm": 0.5}, source="s.toml",
    ...                      prefix="privacy")).delta
    1e-05
    >>> read_privacy(Options({"noise_multiplier": 1.0}, source="s.toml", prefix="privacy"))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: s.toml: privacy.clip_norm: expected a number > 0 (fixed ...
    """
    reader.only(PRIVACY_KEYS)
    mode = reader.choice("mode", "central", MODES)
    clipping = reader.choice("clipping", "fixed", CLIPPINGS)
    if clipping == "fixed":
        clip_norm = reader.number(
            "clip_norm",
            None,
            minimum=0.0,
            open_minimum=True,
            finite=True,
            expected="a number > 0 (fixed clipping needs a norm)",
        )
        for key in ADAPTIVE_KEYS:
            if reader.has(key):
                raise reader.fail(key, 'no adaptive-clipping key with clipping = "fixed"')
    else:
        if mode == "local":
            raise reader.fail("clipping", '"fixed" with mode = "local"', clipping)
        clip_norm = reader.number(
            "clip_norm", ADAPTIVE_INITIAL_CLIP, minimum=0.0, open_minimum=True, finite=True
        )
    return PrivacyConfig(
        mode=mode,
        noise_multiplier=reader.number("noise_multiplier", None, minimum=0.0, finite=True),
        clipping=clipping,
        clip_norm=clip_norm,
        delta=reader.number(
            "delta", 1e-5, minimum=0.0, maximum=1.0, open_minimum=True, open_maximum=True
        ),
        weighting=reader.choice("weighting", "auto", WEIGHTINGS),
        accountant=reader.choice("accountant", "rdp", ACCOUNTANTS),
        target_quantile=reader.number("target_quantile", 0.5, minimum=0.0, maximum=1.0),
        clip_lr=reader.number("clip_lr", 0.2, minimum=0.0, open_minimum=True, finite=True),
        count_stddev=reader.number("count_stddev", 1.0, minimum=0.0, open_minimum=True, finite=True)
        if reader.has("count_stddev")
        else None,
    )
