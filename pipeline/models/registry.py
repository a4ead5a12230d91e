"""The one name-to-architecture map: an architecture is a name plus one width per channel group
(see `pipeline.models.layout`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

from torch import nn

from pipeline.catalog import ARCHS, VGG_BLOCKS
from pipeline.models import mobilenet, resnet, vgg
from pipeline.models.layout import Layout

MAX_WIDTH = 8192
# torchvision-based families: modules with layout(input_size), full_widths(width_mult), build(...)
TORCHVISION_FAMILIES = {"resnet18": resnet, "mobilenetv2": mobilenet}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")


@lru_cache(maxsize=64)
def arch_layout(arch: str, input_size: int = 32) -> Layout:
    """Stages, layers and channel groups of `arch` for a square input of side `input_size`."""
    _check_arch(arch)
    if arch in VGG_BLOCKS:
        return vgg.layout(arch, input_size)
    return TORCHVISION_FAMILIES[arch].layout(input_size)


def group_names(arch: str) -> tuple[str, ...]:
    """The channel groups of `arch` in order: what an `ArchSpec`'s widths are given for."""
    return arch_layout(arch).groups


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a network before loading its weights.

    `widths` holds the width of each channel group in `group_names(arch)` order: for a VGG the
    filters of each conv layer; for a ResNet or MobileNetV2 also coupled groups (a stage's
    residual stream, a block's expanded channels).
    """

    arch: str
    widths: tuple[int, ...]
    in_channels: int = 3
    num_classes: int = 10
    input_size: int = 32
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        _check_arch(self.arch)
        object.__setattr__(self, "widths", tuple(self.widths))
        n = len(group_names(self.arch))
        if len(self.widths) != n:
            raise ValueError(f"{self.arch} has {n} channel groups but {len(self.widths)} widths given")
        for name, w in zip(group_names(self.arch), self.widths, strict=True):
            if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= MAX_WIDTH:
                raise ValueError(f"width of {name} must be an integer in 1..{MAX_WIDTH}, got {w!r}")
        for key in ("in_channels", "num_classes"):
            value = getattr(self, key)
            if not isinstance(value, int) or not 1 <= value <= 100_000:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.input_size, int) or self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size!r}")

    @property
    def group_names(self) -> list[str]:
        return list(group_names(self.arch))

    @property
    def layout(self) -> Layout:
        return arch_layout(self.arch, self.input_size)

    def width_of(self) -> dict[str, int]:
        return dict(zip(self.group_names, self.widths, strict=True))

    def with_widths(self, widths: dict[str, int] | list[int]) -> ArchSpec:
        """A copy with some (dict) or all (list) group widths replaced."""
        if isinstance(widths, dict):
            unknown = set(widths) - set(self.group_names)
            if unknown:
                raise ValueError(f"unknown channel groups {sorted(unknown)}; groups are {self.group_names}")
            widths = [widths.get(n, w) for n, w in zip(self.group_names, self.widths, strict=True)]
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
    _check_arch(arch)
    if not isinstance(width_mult, int | float) or not 0 < width_mult <= 16:
        raise ValueError(f"width multiplier must be in (0, 16], got {width_mult!r}")
    if arch in VGG_BLOCKS:
        widths = vgg.full_widths(arch, width_mult)
    else:
        by_group = TORCHVISION_FAMILIES[arch].full_widths(width_mult)
        widths = [by_group[name] for name in group_names(arch)]
    return ArchSpec(arch, tuple(widths), in_channels, num_classes, input_size)


def build(spec: ArchSpec) -> nn.Module:
    """A freshly initialised network for `spec`."""
    if spec.arch in VGG_BLOCKS:
        return vgg.VGG(spec.arch, list(spec.widths), spec.in_channels, spec.num_classes, spec.input_size)
    return TORCHVISION_FAMILIES[spec.arch].build(spec.width_of(), spec.in_channels, spec.num_classes,
                                                 spec.input_size)
