"""`twostep device`: act as a device: run a variant's head here and let the edge finish.

    twostep device classify IMAGE... --url http://127.0.0.1:8000 [--variant V --split S]
    twostep device plan --url URL [--bandwidth 1mbit] [--accuracy-floor F] [--time-heads 8]
    twostep device fetch VARIANT SPLIT --url URL -o head.safetensors [--format onnx]

Needs neither torch nor Ray with `--runtime onnxruntime` (the default where onnxruntime is
installed): numpy, lz4 and onnxruntime, plus pillow for PNG/JPEG images (docs/serve.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.cost import parse_bandwidth
from pipeline.runtime import DEVICE_RUNTIMES
from twostep.option_flags import add_option_flags, check_options, option, options_from_args


@dataclass(frozen=True)
class DeviceOptions:
    """What every `twostep device` action shares: the edge, this device's link, the runtime that
    runs heads here, the transport of frames, and the constraint of its plans. A dataclass, not
    pydantic: a device installs numpy, lz4, onnxruntime and pillow only."""

    url: str = option("http://127.0.0.1:8000", "the edge (twostep serve)")
    link: str = option("device", "this device's link id at the edge")
    timeout_s: float = option(30.0, "HTTP timeout in seconds", low=0.0, above=True, high=3600.0)
    runtime: str = option("auto", "what runs the head here: the edge's ONNX graph on ONNX Runtime, "
                          "or its weights on PyTorch (auto: onnxruntime where installed)",
                          choices=DEVICE_RUNTIMES)
    threads: int = option(1, "threads of the runtime", low=1, high=1024)
    transport: str = option("auto", "how frames go: stream (one WebSocket session, 10 bytes a "
                            "frame besides its values), http (a POST /v1/tail per frame), or auto "
                            "(a session where the edge offers one, else http)",
                            choices=("auto", "stream", "http"))
    token_file: str | None = option(None, "file holding the bearer token the edge's sessions "
                                    "require (twostep serve --token-file)")
    accuracy_floor: float | None = option(None, "lowest accuracy, a fraction (none: the edge's "
                                          "default)", low=0.0, high=1.0)
    latency_budget_ms: float | None = option(None, "end-to-end latency limit in ms, instead of an "
                                             "accuracy floor", low=0.0, high=1e9)

    def __post_init__(self) -> None:
        check_options(self)
        if self.accuracy_floor is not None and self.latency_budget_ms is not None:
            raise ValueError("give --accuracy-floor or --latency-budget-ms, not both")


@dataclass(frozen=True)
class ClassifyOptions(DeviceOptions):
    """`twostep device classify IMAGE...`."""

    variant: str | None = option(None, "run this variant (none: the edge's plan)")
    split: str | None = option(None, "at this split (with --variant)")
    throttle: float | None = option(None, "hold frames back as a link of this rate would: 1mbit",
                                    low=0.0, above=True, read=parse_bandwidth)
    repeat: int = option(1, "send each image this many times", low=1, high=1_000_000)
    logits: bool = option(False, "ask a session for the logits too (HTTP answers always carry them)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.variant is None) != (self.split is None):
            raise ValueError("give --variant and --split together (or neither, to plan)")


@dataclass(frozen=True)
class DevicePlanOptions(DeviceOptions):
    """`twostep device plan`."""

    bandwidth: float | None = option(None, "link rate to plan for (none: the edge's estimate)",
                                     low=0.0, above=True, read=parse_bandwidth)
    time_heads: int = option(0, "time the heads of the edge's best N rows here first and plan "
                             "with this device's own times for them (0: the edge's profile, scaled)",
                             low=0, high=10_000)
    calls: int | None = option(None, "timed calls per head (with --time-heads; none: 10)",
                               low=1, high=100_000)
    idle_ms: float | None = option(None, "idle time before each timed call, as between this "
                                   "device's requests (with --time-heads; none: 0)",
                                   low=0.0, high=60_000.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.time_heads and (self.calls is not None or self.idle_ms is not None):
            raise ValueError("--calls and --idle-ms time heads: give --time-heads N too")


@dataclass(frozen=True)
class FetchOptions(DeviceOptions):
    """`twostep device fetch VARIANT SPLIT`."""

    output: str | None = option(None, "file to write (required)")
    format: str = option("safetensors", "head weights (safetensors) or the ONNX graph pixels -> "
                         "features", choices=("safetensors", "onnx"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output is None:
            raise ValueError("--output (-o) is required: the file to write")


ACTIONS = {"classify": ClassifyOptions, "plan": DevicePlanOptions, "fetch": FetchOptions}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {"classify": "classify images", "plan": "ask the edge for a plan",
             "fetch": "download and verify head weights"}
    for name, model in ACTIONS.items():
        action = actions.add_parser(name, help=helps[name])
        if name == "classify":
            action.add_argument("images", nargs="+", help="PNG/JPEG files, or .npy uint8 (C, H, W)")
            action.add_argument("--json", action="store_true", help="one JSON object per result")
        if name == "fetch":
            action.add_argument("variant")
            action.add_argument("split")
            action.add_argument("-o", dest="output", metavar="TEXT", default=None,
                                help="same as --output")
        add_option_flags(action.add_argument_group(f"{name} ({model.__name__})"), model)


def _load_image(client, path: Path):
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.dtype != np.uint8:
            raise ValueError(f"{path}: .npy images must be uint8, got {array.dtype}")
        return client.pixels(array)
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: give a .png, .jpg/.jpeg or .npy image")
    return client.pixels(path.read_bytes(), kind)


def _print_result(name: str, result) -> None:
    t = result.timings_ms
    uplink = f"{result.uplink_bps / 1e6:.2f} Mbit/s" if result.uplink_bps else "not measured"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total")
    print(f"{name}: {result.label} ({result.prediction}) via {result.variant}@{result.split}, "
          f"{result.bytes_sent} bytes sent; {t['total']:.1f} ms ({stages}); uplink {uplink}")


def run(cli: argparse.Namespace) -> int:
    from pipeline.device_times import device_times_document
    from pipeline.session_wire import read_token
    from serve.device.client import DeviceClient, DeviceError

    args = options_from_args(ACTIONS[cli.action], cli)
    token = read_token(args.token_file) if args.token_file else None
    client = DeviceClient(args.url, args.link, args.timeout_s,
                          throttle_bps=getattr(args, "throttle", None), runtime=args.runtime,
                          threads=args.threads, transport=args.transport, token=token,
                          logits=getattr(args, "logits", False))
    try:
        if cli.action == "plan":
            bandwidth = args.bandwidth
            if args.time_heads:
                answer = client.plan_timed(args.accuracy_floor, args.latency_budget_ms, bandwidth,
                                           shortlist=args.time_heads,
                                           calls=10 if args.calls is None else args.calls,
                                           idle_ms=0.0 if args.idle_ms is None else args.idle_ms)
                answer["timed_heads_ms"] = device_times_document(client.device_ms)
            else:
                answer = client.plan(args.accuracy_floor, args.latency_budget_ms, bandwidth)
            print(json.dumps(answer, indent=1))
        elif cli.action == "fetch":
            data, sha = client.download_head(cli.variant, cli.split, fmt=args.format)
            Path(args.output).write_bytes(data)
            print(f"wrote {args.output}: {len(data)} bytes, sha256 {sha}")
        else:
            for path in map(Path, cli.images):
                pixels = _load_image(client, path)
                for _ in range(args.repeat):
                    result = client.classify(pixels, args.variant, args.split, args.accuracy_floor,
                                             args.latency_budget_ms)
                    if cli.json:
                        print(json.dumps({"image": str(path), **result.__dict__}))
                    else:
                        _print_result(str(path), result)
    except DeviceError as err:
        if 400 <= err.status < 500:  # the edge refused what we asked: a usage error
            raise ValueError(str(err)) from None
        raise  # the edge failed or could not be reached: exit 1 (twostep/cli.py)
    finally:
        client.close()
    return 0
