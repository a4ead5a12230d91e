"""`twostep profile`: per-layer latency of a checkpoint or of every variant of a series (JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from pipeline.config import ConfigModel, build_config, check_device
from pipeline.profile_paths import device_profile_of, series_edge_profile
from pipeline.runtime import DEFAULT_RUNTIME, Runtime
from twostep.config_flags import add_config_flags, flag_values


class ProfileOptions(ConfigModel):
    """`twostep profile PATH`: how the models are timed, and where the profile goes."""

    output: str | None = Field(None, description="profile file; none: <series>/profile.json, or "
                               "<checkpoint>.profile.json")
    batch_size: int = Field(1, ge=1, le=4096, description="images per forward pass")
    repeats: int = Field(20, ge=1, le=100_000, description="timed runs per layer (their median)")
    warmup: int = Field(5, ge=0, le=100_000, description="untimed runs per layer")
    threads: int = Field(1, ge=1, le=1024, description="threads of the runtime (1: as a Serve "
                         "replica runs)")
    runtime: Runtime = Field(DEFAULT_RUNTIME, description="time the models as this runtime runs "
                             "them (twostep serve runs the default)")
    idle_ms: float = Field(0.0, ge=0.0, le=10_000.0, description="idle time before each timed "
                           "call, as between a server's requests")
    device: str = Field("cpu", description="torch device to time on: cpu, cuda or cuda:N")
    slowdown: float | None = Field(None, gt=0.0, le=1e6, description="also write a device profile "
                                   "derived as this many times slower (<output>.device.json)")

    @field_validator("device")
    @classmethod
    def _a_device_to_time_on(cls, name: str) -> str:
        if name == "auto":
            raise ValueError("device must be cpu, cuda or cuda:N (the one to time on), got 'auto'")
        return check_device(name)

    @model_validator(mode="after")
    def _onnxruntime_on_the_cpu(self) -> ProfileOptions:
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError("runtime onnxruntime times the CPU: leave --device at cpu")
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a checkpoint (.safetensors) or a series directory")
    add_config_flags(parser.add_argument_group("timing (ProfileOptions; docs/config.md)"),
                     ProfileOptions)
    parser.add_argument("-o", dest="output", metavar="TEXT", default=None, help="same as --output")


def run(cli: argparse.Namespace) -> int:
    import torch

    from pipeline.checkpoint import load_checkpoint
    from pipeline.profile_series import profile_as_served
    from pipeline.profiler import derive_profile, profile_document, save_profile
    from pipeline.series import MANIFEST

    args = build_config(ProfileOptions, flag_values(cli, ProfileOptions.model_fields))
    path = Path(cli.path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint nor a series directory")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r} asked for, but CUDA is not available here")
    series = path.is_dir() or path.name == MANIFEST
    if args.output:
        output = Path(args.output)
    elif series:
        output = series_edge_profile(path if path.is_dir() else path.parent)
    else:
        output = path.with_name(f"{path.stem}.profile.json")
    if series:
        from tqdm import tqdm

        from pipeline.profile_series import profile_series
        from pipeline.series import SeriesStore

        store = SeriesStore.open(path if path.is_dir() else path.parent)
        with tqdm(total=len(store.ids()), desc="profile", unit="variant") as bar:
            doc = profile_series(store, args.runtime, args.threads, args.warmup, args.repeats,
                                 args.idle_ms, progress=lambda _: bar.update(),
                                 batch_size=args.batch_size, device=args.device)
    else:
        torch.set_num_threads(args.threads)
        model, spec, _ = load_checkpoint(path)
        entry = profile_as_served(model, spec, args.runtime, None, args.batch_size, args.warmup,
                                  args.repeats, args.threads, args.idle_ms, device)
        doc = profile_document({"base": entry}, args.batch_size, args.warmup, args.repeats, device,
                               args.runtime, args.idle_ms)
    save_profile(output, doc)
    for vid, entry in doc["variants"].items():
        gap = entry["total_ms"] - entry["whole_ms"]
        print(f"{vid}: sum of layers {entry['total_ms']:.3f} ms, one forward "
              f"{entry['whole_ms']:.3f} ms (gap {gap:+.3f} ms)")
    print(f"wrote {output} ({args.runtime}, {args.threads} thread(s))")
    if args.slowdown is not None:
        device_output = device_profile_of(output)
        save_profile(device_output, derive_profile(doc, args.slowdown))
        print(f"wrote {device_output} (device = {args.slowdown:g} x this machine)")
    return 0
