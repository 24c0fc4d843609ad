"""The one base of the networks' configs: dict round trip, checks, and a cap on network sizes.

Every network of the course is built from a small frozen dataclass (``UNetConfig``, ``VAEConfig``,
``ClassifierConfig``, ``JudgeConfig``). What they share lives here, once:

* ``from_dict`` / ``to_dict``: a JSON round trip (tuples are lists in JSON, lists become tuples
  again); keys starting with "_" (diffusers' ``_class_name``, ...) are bookkeeping and ignored;
  unknown keys are refused by ``checks.check_config_keys`` (a typo, or another network's config).
* positive-integer checks of the sizes (one number, or a tuple with one per block).
* **the size cap.** A config read from a JSON file can ask for any size: ``block_out_channels =
  [1000000]`` would allocate terabytes before failing, and a large one would run for hours. A
  config is refused at once, naming the key and the cap, when

  - a width (channels, hidden sizes) exceeds ``MAX_WIDTH`` = 16384,
  - a number of layers per block exceeds ``MAX_LAYERS`` = 16, or a config has more than
    ``MAX_LEVELS`` = 8 blocks (resolutions),
  - a number of classes exceeds ``MAX_CLASSES`` = 100000,
  - and, for configs read with ``from_dict``, the network has more than ``MAX_PARAMETERS`` = 2e9
    parameters (8 GB in float32; Stable Diffusion v1.5's UNet has 0.86e9): counted exactly by
    building the network on PyTorch's meta device, which allocates no memory.

  Stable Diffusion v1.x and v2.x and every network of the course are far below these caps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from ..checks import check_config_keys

__all__ = ["NetworkConfig", "MAX_WIDTH", "MAX_LAYERS", "MAX_LEVELS", "MAX_CLASSES", "MAX_PARAMETERS",
           "check_parameter_cap"]

MAX_WIDTH = 16384  # channels of a layer, hidden size, embedding width
MAX_LAYERS = 16  # layers (resnets, transformer blocks) per block
MAX_LEVELS = 8  # blocks, i.e. resolutions: entries of a per-block tuple
MAX_CLASSES = 100_000  # classes of a classifier, rows of a class embedding
MAX_PARAMETERS = 2_000_000_000  # parameters of one network (8 GB in float32)

_CAPS = {"width": MAX_WIDTH, "layers": MAX_LAYERS, "classes": MAX_CLASSES}
_CAP_NAMES = {"width": "MAX_WIDTH", "layers": "MAX_LAYERS", "classes": "MAX_CLASSES"}


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class NetworkConfig:
    """Base of the course's network configs (frozen dataclasses); see the module's docstring.

    A subclass names itself and its size keys with class variables and may add checks in
    ``_validate``:

    :cvar config_name: the name in messages, e.g. "UNet"
    :cvar size_keys: field -> "width", "layers", "classes" (the cap it is held to) or "count" (no
        cap): these fields must be positive integers (or tuples of them, one per block, where the
        field's type allows a tuple), or None where the field's default is None
    :cvar size_hints: field -> a sentence added to the message when it is not a positive integer
    :cvar main_size_keys: the fields that set most of the parameters, named when the cap is exceeded
    """

    config_name: ClassVar[str] = "network"
    size_keys: ClassVar[dict[str, str]] = {}
    size_hints: ClassVar[dict[str, str]] = {}
    main_size_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self._check_sizes()
        self._validate()

    def _validate(self) -> None:
        """Checks of one network (how the fields fit together); the subclass's."""

    def _check_sizes(self) -> None:
        fields = {field.name: field for field in dataclasses.fields(self)}
        for name, kind in self.size_keys.items():
            value = getattr(self, name)
            if value is None and fields[name].default is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(_is_positive_int(v) for v in values):
                tuples = " or a non-empty tuple of them (one per block)" if "tuple" in str(fields[name].type) else ""
                hint = f" {self.size_hints[name]}" if name in self.size_hints else ""
                raise ValueError(f"{self.config_name} config {name} must be a positive integer{tuples}, "
                                 f"got {value!r}.{hint}")
            if len(values) > MAX_LEVELS:
                raise ValueError(f"{self.config_name} config {name} has {len(values)} entries (blocks), more than the "
                                 f"cap of {MAX_LEVELS} (MAX_LEVELS in course_lib/nn/config.py). Use fewer blocks.")
            if kind in _CAPS and max(values) > _CAPS[kind]:
                raise ValueError(f"{self.config_name} config {name}={value!r} is above the cap of {_CAPS[kind]} "
                                 f"({_CAP_NAMES[kind]} in course_lib/nn/config.py): the course's networks are far "
                                 f"smaller. Lower it.")

    def build(self) -> nn.Module:
        """The network this config describes, freshly initialised (the subclass's)."""
        raise NotImplementedError

    def parameter_count(self) -> int:
        """Parameters of the network this config describes, counted on the meta device (no memory used)."""
        with torch.device("meta"):
            network = self.build()
        return sum(p.numel() for p in network.parameters())

    @classmethod
    def from_dict(cls, config: dict):
        """Build from a dict, e.g. a checkpoint's JSON or diffusers' config.json; the size cap included.

        Keys starting with "_" are ignored; unknown keys are refused (``checks.check_config_keys``).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict takes a dict (a config read from JSON), got "
                            f"{type(config).__name__}.")
        config = cls._translate({k: v for k, v in dict(config).items() if not str(k).startswith("_")})
        check_config_keys(config, [field.name for field in dataclasses.fields(cls)], cls.config_name)
        made = cls(**config)
        check_parameter_cap(made.parameter_count(), f"{cls.config_name} config", cls.main_size_keys)
        return made

    @classmethod
    def _translate(cls, config: dict) -> dict:
        """Keys of other libraries' configs mapped to ours (the subclass's; e.g. diffusers' neutral options)."""
        return config

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples as lists); ``XConfig.from_dict(c.to_dict()) == c``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def check_parameter_cap(count: int, what: str, size_keys) -> None:
    """Refuse a network of more than ``MAX_PARAMETERS`` parameters, naming the keys that set its size.

    :param count: the network's parameters
    :param what: the config in words, e.g. "UNet config"
    :param size_keys: the config keys that set the size, for the message
    """
    if count > MAX_PARAMETERS:
        raise ValueError(f"The {what} describes a network of {count:,} parameters ({4 * count / 1e9:.1f} GB in "
                         f"float32), above the cap of {MAX_PARAMETERS:,} (MAX_PARAMETERS in course_lib/nn/config.py). "
                         f"Its size is set by {', '.join(size_keys)}: lower them.")
