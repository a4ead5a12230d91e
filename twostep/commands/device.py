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
from pathlib import Path

from pipeline.cost import parse_bandwidth
from pipeline.runtime import DEVICE_RUNTIMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="http://127.0.0.1:8000", help="the edge (twostep serve)")
    common.add_argument("--link", default="device", help="this device's link id at the edge")
    common.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout")
    common.add_argument("--runtime", choices=DEVICE_RUNTIMES, default="auto",
                        help="what runs the head here: the edge's ONNX graph on ONNX Runtime, or its "
                             "weights on PyTorch (default auto: onnxruntime where installed)")
    common.add_argument("--threads", type=int, default=1, help="threads of the runtime (default 1)")
    common.add_argument("--transport", choices=("auto", "stream", "http"), default="auto",
                        help="how frames go: stream (one WebSocket session, 10 bytes a frame "
                             "besides its values), http (a POST /v1/tail per frame), or auto "
                             "(default: a session where the edge offers one, else http)")
    common.add_argument("--token-file", help="file holding the bearer token the edge's sessions "
                                             "require (twostep serve --token-file)")
    constraint = common.add_mutually_exclusive_group()
    constraint.add_argument("--accuracy-floor", type=float, help="lowest accuracy, a fraction")
    constraint.add_argument("--latency-budget-ms", type=float, help="end-to-end latency limit")

    classify = actions.add_parser("classify", parents=[common], help="classify images")
    classify.add_argument("images", nargs="+", help="PNG/JPEG files, or .npy uint8 (C, H, W)")
    classify.add_argument("--variant", help="run this variant (default: the edge's plan)")
    classify.add_argument("--split", help="at this split (with --variant)")
    classify.add_argument("--throttle", help="hold frames back as a link of this rate would: 1mbit")
    classify.add_argument("--repeat", type=int, default=1, help="send each image this many times")
    classify.add_argument("--json", action="store_true", help="one JSON object per result")
    classify.add_argument("--logits", action="store_true",
                          help="ask a session for the logits too (HTTP answers always carry them)")

    plan = actions.add_parser("plan", parents=[common], help="ask the edge for a plan")
    plan.add_argument("--bandwidth", help="link rate to plan for (default: the edge's estimate)")
    plan.add_argument("--time-heads", type=int, default=0, metavar="N",
                      help="time the heads of the edge's best N rows here first and plan with "
                           "this device's own times for them (default 0: the edge's profile, scaled)")
    plan.add_argument("--calls", type=int, help="timed calls per head (with --time-heads; default 10)")
    plan.add_argument("--idle-ms", type=float,
                      help="idle time before each timed call, as between this device's requests "
                           "(with --time-heads; default 0)")

    fetch = actions.add_parser("fetch", parents=[common], help="download and verify head weights")
    fetch.add_argument("variant")
    fetch.add_argument("split")
    fetch.add_argument("-o", "--output", required=True, help="file to write")
    fetch.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                       help="head weights (safetensors, default) or the ONNX graph pixels -> features")


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


def run(args: argparse.Namespace) -> int:
    from pipeline.device_times import device_times_document
    from serve.client import DeviceClient, DeviceError

    if args.accuracy_floor is not None and not 0 <= args.accuracy_floor <= 1:
        raise ValueError(f"--accuracy-floor must be a fraction in [0, 1], got {args.accuracy_floor}")
    throttle = parse_bandwidth(args.throttle) if getattr(args, "throttle", None) else None
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    from serve.stream_client import read_token

    token = read_token(args.token_file) if args.token_file else None
    client = DeviceClient(args.url, args.link, args.timeout_s, throttle_bps=throttle,
                          runtime=args.runtime, threads=args.threads, transport=args.transport,
                          token=token, logits=getattr(args, "logits", False))
    try:
        if args.action == "plan":
            bandwidth = parse_bandwidth(args.bandwidth) if args.bandwidth else None
            if not args.time_heads and (args.calls is not None or args.idle_ms is not None):
                raise ValueError("--calls and --idle-ms time heads: give --time-heads N too")
            if args.time_heads:
                answer = client.plan_timed(args.accuracy_floor, args.latency_budget_ms, bandwidth,
                                           shortlist=args.time_heads,
                                           calls=10 if args.calls is None else args.calls,
                                           idle_ms=0.0 if args.idle_ms is None else args.idle_ms)
                answer["timed_heads_ms"] = device_times_document(client.device_ms)
            else:
                answer = client.plan(args.accuracy_floor, args.latency_budget_ms, bandwidth)
            print(json.dumps(answer, indent=1))
        elif args.action == "fetch":
            data, sha = client.download_head(args.variant, args.split, fmt=args.format)
            Path(args.output).write_bytes(data)
            print(f"wrote {args.output}: {len(data)} bytes, sha256 {sha}")
        else:
            if (args.variant is None) != (args.split is None):
                raise ValueError("give --variant and --split together (or neither, to plan)")
            if args.repeat < 1:
                raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
            for path in map(Path, args.images):
                pixels = _load_image(client, path)
                for _ in range(args.repeat):
                    result = client.classify(pixels, args.variant, args.split, args.accuracy_floor,
                                             args.latency_budget_ms)
                    if args.json:
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
