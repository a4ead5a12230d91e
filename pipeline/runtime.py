"""What runs a variant's layers, declared once: every verb, deployment, profile and benchmark
takes its choices and its default from here (importable without torch: the device client)."""

from __future__ import annotations

from typing import Literal, get_args

Runtime = Literal["onnxruntime", "torch"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# 3-6x faster than eager PyTorch per call at batch 1 on these CPUs (../shared/ENVIRONMENT.md)
DEFAULT_RUNTIME: Runtime = "onnxruntime"
# a device: ONNX Runtime where it is installed, else PyTorch (`serve.device.client.resolve_runtime`)
DEVICE_RUNTIMES: tuple[str, ...] = ("auto", *RUNTIMES)
# profiles written before they named their runtime were timed with PyTorch
UNNAMED_PROFILE_RUNTIME: Runtime = "torch"


def check_runtime(runtime: object, choices: tuple[str, ...] = RUNTIMES) -> str:
    """`runtime` when it is one of `choices`, else ValueError naming them."""
    if runtime not in choices:
        raise ValueError(f"runtime must be one of {', '.join(choices)}, got {runtime!r}")
    return runtime  # type: ignore[return-value]


def profile_runtime(profile: dict) -> str:
    """The runtime a profile document was timed with."""
    return profile.get("runtime", UNNAMED_PROFILE_RUNTIME)
