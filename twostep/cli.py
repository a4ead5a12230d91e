"""`twostep <verb>`: parses arguments and dispatches to one module per verb.

Verb modules are imported lazily so `twostep --help` stays fast and Ray is imported only by the
verbs that need it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# verb -> (module under twostep.commands, one-line description)
VERBS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model from a config file and/or flags"),
    "eval": ("evaluate", "report the test accuracy of a checkpoint"),
    "export": ("export", "export ONNX heads and tails of a series, checked against PyTorch"),
    "profile": ("profile", "measure per-layer latency and write a profile (JSON)"),
    "plan": ("plan", "choose the best (variant, split) for a bandwidth and constraint"),
    "prune": ("prune", "run 2-step pruning (in-process, or on Ray Tune with --ray)"),
    "series": ("series", "inspect a model series (series show DIR)"),
    "serve": ("serve", "serve split inference of a model series on Ray Serve"),
    "device": ("device", "run a variant's head locally and send frames to the edge"),
    "demo": ("demo", "the end-to-end demo on the embedded default"),
    "bench": ("bench", "compare split strategies over a link, side by side"),
    "capacity": ("capacity", "edge nodes for N devices at a frame rate and p99, from measured costs"),
}


class UsageError(ValueError):
    """A bad command-line value; printed as `twostep: error: ...` with exit code 2."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twostep")
    except PackageNotFoundError:
        return "(not installed)"


def _available_verbs() -> dict[str, tuple[str, str]]:
    return {
        verb: (module, text)
        for verb, (module, text) in VERBS.items()
        if importlib.util.find_spec(f"twostep.commands.{module}") is not None
    }


def build_parser(verb: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser; only `verb`'s module is imported (its flags), so `twostep --help` and a
    verb that needs neither torch nor Ray (`twostep device` on a device) start fast."""
    parser = argparse.ArgumentParser(
        prog="twostep",
        description="2-step pruning for device-edge split inference, served with Ray.",
    )
    parser.add_argument("--version", action="version", version=f"twostep {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    modules = {}
    for name, (module, text) in _available_verbs().items():
        sub_parser = sub.add_parser(name, help=text, description=text)
        if name == verb:
            importlib.import_module(f"twostep.commands.{module}").add_arguments(sub_parser)
        modules[name] = module
    return parser, modules


def _verb_of(argv: list[str]) -> str | None:
    """The verb of a command line: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser(_verb_of(argv))
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    mod = importlib.import_module(f"twostep.commands.{modules[args.verb]}")
    try:
        return int(mod.run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as err:
        if os.environ.get("TWOSTEP_DEBUG"):
            raise
        print(f"twostep {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of the output left (`twostep series show DIR | head`): stop quietly, as
        # Unix tools do; stdout then goes nowhere, so the interpreter's last flush cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, RuntimeError) as err:
        # a failure while running (a server that does not answer, a disk that refuses a
        # write), not a bad command line: exit 1, one line
        if os.environ.get("TWOSTEP_DEBUG"):
            raise
        print(f"twostep {args.verb}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"twostep {args.verb}: interrupted", file=sys.stderr)
        return 130
