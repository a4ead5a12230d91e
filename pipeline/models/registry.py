"""The one name-to-architecture map: an architecture is a name plus per-layer widths."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from torch import nn

from pipeline.catalog import ARCHS
from pipeline.models import vgg

MAX_WIDTH = 8192


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a network before loading its weights.

    `widths` holds the output channels of each conv layer in forward order.
    """

    arch: str
    widths: tuple[int, ...]
    in_channels: int = 3
    num_classes: int = 10
    input_size: int = 32
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown model {self.arch!r}; choose one of {', '.join(ARCHS)}")
        object.__setattr__(self, "widths", tuple(self.widths))
        n = len(vgg.conv_names(self.arch))
        if len(self.widths) != n:
            raise ValueError(f"{self.arch} has {n} conv layers but {len(self.widths)} widths given")
        for name, w in zip(vgg.conv_names(self.arch), self.widths, strict=True):
            if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= MAX_WIDTH:
                raise ValueError(f"width of {name} must be an integer in 1..{MAX_WIDTH}, got {w!r}")
        for key in ("in_channels", "num_classes"):
            value = getattr(self, key)
            if not isinstance(value, int) or not 1 <= value <= 100_000:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.input_size, int) or self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size!r}")

    @property
    def conv_names(self) -> list[str]:
        return vgg.conv_names(self.arch)

    def width_of(self) -> dict[str, int]:
        return dict(zip(self.conv_names, self.widths, strict=True))

    def with_widths(self, widths: dict[str, int] | list[int]) -> ArchSpec:
        """A copy with some (dict) or all (list) conv widths replaced."""
        if isinstance(widths, dict):
            unknown = set(widths) - set(self.conv_names)
            if unknown:
                raise ValueError(f"unknown layers {sorted(unknown)}; layers are {self.conv_names}")
            widths = [widths.get(n, w) for n, w in zip(self.conv_names, self.widths, strict=True)]
        return replace(self, widths=tuple(widths))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d.pop("extra")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        if not isinstance(d, dict):
            raise ValueError(f"architecture description must be a JSON object, got {type(d).__name__}")
        allowed = {"arch", "widths", "in_channels", "num_classes", "input_size"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown keys in architecture description: {sorted(unknown)}")
        if "arch" not in d or "widths" not in d:
            raise ValueError("architecture description needs 'arch' and 'widths'")
        if not isinstance(d["widths"], list):
            raise ValueError("'widths' must be a list of integers")
        return cls(**{**d, "widths": tuple(d["widths"])})


def make_spec(
    arch: str,
    width_mult: float = 1.0,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
) -> ArchSpec:
    """The spec of the standard network `arch` scaled by `width_mult`."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")
    if not isinstance(width_mult, int | float) or not 0 < width_mult <= 16:
        raise ValueError(f"width multiplier must be in (0, 16], got {width_mult!r}")
    return ArchSpec(arch, tuple(vgg.full_widths(arch, width_mult)), in_channels, num_classes, input_size)


def build(spec: ArchSpec) -> nn.Module:
    """A freshly initialised network for `spec`."""
    return vgg.VGG(spec.arch, list(spec.widths), spec.in_channels, spec.num_classes, spec.input_size)
