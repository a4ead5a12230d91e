"""docs/config.md and the JSON schemas in docs/schema/, generated from the typed config models.

    python -m twostep.config_docs          # rewrite them
    python -m twostep.config_docs --check  # exit 1 when they are out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from pipeline.config import PruneConfig, TrainConfig
from serve.settings import AppArgs
from twostep.bench.config import BenchConfig
from twostep.bench.edge_side import EdgeOptions
from twostep.commands.plan import PlanOptions
from twostep.commands.profile import ProfileOptions
from twostep.config_flags import flag_name
from twostep.demo_config import DemoSettings

DOCS = Path(__file__).resolve().parents[1] / "docs"

# (schema file stem, model, where its keys are read)
MODELS: list[tuple[str, type[BaseModel], str]] = [
    ("train", TrainConfig, "`[train]` of a config file; `twostep train` flags"),
    ("prune", PruneConfig, "`[prune]` of a config file; `twostep prune` flags"),
    ("demo", DemoSettings, "`[demo]` of a config file; `twostep demo` flags"),
    ("bench", BenchConfig, "`twostep bench` flags"),
    ("serve", AppArgs, "`twostep serve` flags; `args:` of a Serve config file (`serve/serve.yaml`); "
                       "`serve run serve.app:build_app key=value`"),
    ("plan", PlanOptions, "`twostep plan SERIES` flags"),
    ("profile", ProfileOptions, "`twostep profile PATH` flags"),
    ("bench-edge", EdgeOptions, "flags of `python -m twostep.bench.edge_side`, the edge process "
                                "`twostep bench` starts"),
]

INTRO = """# Configuration reference

Generated from the typed models (`python -m twostep.config_docs`; a test fails when this file is
out of date). Each key is declared once, in its model: the same name is a TOML key (with `_`), a
command-line flag (with `-`, e.g. `step1_budget` is `--step1-budget`), and a property of the JSON
schema in `docs/schema/`. Flags override the file given with `--config`. A file may be flat (the
keys of one model) or sectioned (`[train]`, `[prune]`, `[demo]`, as `configs/demo.toml`); each
verb reads its own section. An unknown key or a bad value fails with one line naming the key.

Bandwidths are bits per second: a number (`2.5e6`) or a string with a unit (`250kbit`,
`1mbit`, `1gbit`); a bare number under 1000 is refused, since it is almost surely meant in
other units.
"""


def _type_text(schema: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if "anyOf" in schema:
        return " or ".join(_type_text(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type_text(schema.get('items', {}))}"
    return schema.get("type", "any")


def _default_text(value: object) -> str:
    if value is None:
        return "none"
    return f"`{json.dumps(value)}`"


def model_table(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="validation")
    lines = ["| key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    required = set(schema.get("required", []))
    for name, prop in schema["properties"].items():
        default = "required" if name in required else _default_text(prop.get("default"))
        meaning = (prop.get("description") or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `{flag_name(name)}` | {_type_text(prop)} | {default} | {meaning} |")
    return "\n".join(lines)


def render() -> dict[Path, str]:
    """Every generated file: path -> text."""
    files: dict[Path, str] = {}
    parts = [INTRO]
    for stem, model, where in MODELS:
        schema_path = DOCS / "schema" / f"{stem}.schema.json"
        files[schema_path] = json.dumps(model.model_json_schema(mode="validation"), indent=1) + "\n"
        parts.append(f"## {model.__name__} ({stem})\n\n{(model.__doc__ or '').strip()}\n\n"
                     f"Read from: {where}. JSON schema: `docs/schema/{stem}.schema.json`.\n\n"
                     f"{model_table(model)}\n")
    files[DOCS / "config.md"] = "\n".join(parts)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = [path for path, text in render().items()
             if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run python -m twostep.config_docs)")
        return 1 if stale else 0
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(render())} files under {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
