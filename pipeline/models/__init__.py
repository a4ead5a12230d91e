"""CNN architectures with named split points."""

from pipeline.models.registry import ArchSpec as ArchSpec
from pipeline.models.registry import build as build
from pipeline.models.registry import make_spec as make_spec
from pipeline.models.vgg import VGG as VGG

__all__ = ["ArchSpec", "VGG", "build", "make_spec"]
