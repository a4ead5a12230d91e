"""The query parameters of every HTTP route, as typed models (FastAPI validates them; the two
per-frame routes, /v1/tail and /v1/classify, through `parse_query`, which is cheaper).

An unknown parameter (a typo such as `accuracy_flor`) or a bad value is refused with HTTP 400
and one line naming it (`serve/router.py` and `serve/tail.py` install `validation_error`). No
Ray and no web framework here, so the rules are unit-tested on their own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from pipeline.cost import MAX_RTT_MS, parse_bandwidth
from serve.inputs import HttpError

LINK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
VARIANT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_LATENCY_BUDGET_MS = 3_600_000.0


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


# Bits per second from `2.5e6`, `250kbit` or `1mbit` (see `pipeline.cost.parse_bandwidth`).
BitsPerSecond = Annotated[float, BeforeValidator(parse_bandwidth)]
LinkId = Annotated[str, StringConstraints(pattern=LINK_ID.pattern)]
VariantId = Annotated[str, StringConstraints(pattern=VARIANT_ID.pattern)]
SplitName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")]
Shape = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}(,[0-9]{1,5}){0,3}$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
RttMs = Annotated[float, Field(ge=0.0, le=MAX_RTT_MS)]
BudgetMs = Annotated[float, Field(gt=0.0, le=MAX_LATENCY_BUDGET_MS, allow_inf_nan=False)]


class QueryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstraintQuery(QueryModel):
    """At most one of the two constraints; neither: the server's default."""

    accuracy_floor: Fraction | None = Field(None, description="lowest test accuracy (fraction)")
    latency_budget_ms: BudgetMs | None = Field(None, description="end-to-end latency limit")

    @model_validator(mode="after")
    def _one_constraint(self):
        if self.accuracy_floor is not None and self.latency_budget_ms is not None:
            raise ValueError("give accuracy_floor or latency_budget_ms, not both")
        if self.latency_budget_ms is not None:
            _finite(self.latency_budget_ms)
        return self


class DeviceSpeedQuery(ConstraintQuery):
    """A device that says how fast it is: slowdown x the edge, plus a fixed ms per call."""

    device_slowdown: Annotated[float, Field(gt=0.0, le=1e6)] | None = None
    device_overhead_ms: Annotated[float, Field(ge=0.0, le=3_600_000.0)] = 0.0
    rtt_ms: RttMs | None = None

    @model_validator(mode="after")
    def _overhead_needs_slowdown(self):
        if self.device_overhead_ms and self.device_slowdown is None:
            raise ValueError("device_overhead_ms needs device_slowdown")
        return self


class PlanQuery(DeviceSpeedQuery):
    """`GET /v1/plan`."""

    bandwidth_bps: BitsPerSecond | None = None
    frames_only: bool = Field(False, description="the device runs heads and sends wire frames, "
                              "never the image: leave out raw-pixel and JPEG uploads")
    top: Annotated[int, Field(ge=1, le=100)] = 5
    link: LinkId = "default"


class PlanTableQuery(DeviceSpeedQuery):
    """`GET /v1/plan/table`."""

    frames_only: bool = Field(False, description="the device runs heads and sends wire frames, "
                              "never the image: leave out raw-pixel and JPEG uploads")


class ClassifyQuery(ConstraintQuery):
    """`POST /v1/classify`: a forced `variant`/`split`, else the router's choice."""

    link: LinkId = "default"
    uplink_bps: BitsPerSecond | None = None
    variant: VariantId | None = None
    split: SplitName | None = None
    shape: Shape | None = None


class TailQuery(QueryModel):
    """`POST /v1/tail` (the variant may come in Serve's multiplexing header instead)."""

    variant: VariantId | None = None
    split: SplitName | None = None
    link: LinkId = "default"
    uplink_bps: BitsPerSecond | None = None


class LinkQuery(QueryModel):
    """`GET /v1/link`."""

    link: LinkId = "default"


class NoQuery(QueryModel):
    """A route that takes no query parameters."""


class HeadQuery(QueryModel):
    """`GET /v1/variants/{id}/head`."""

    split: SplitName | None = None
    format: Literal["safetensors", "onnx"] = "safetensors"


Q = TypeVar("Q", bound=QueryModel)


def parse_query(model: type[Q], params: Mapping[str, str]) -> Q:
    """`model` from a request's query parameters; HttpError 400 naming every bad one. The hot
    routes call this themselves: FastAPI's own query-model injection costs ~0.1 ms a request,
    pydantic's validation ~1 us."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as err:
        raise HttpError(400, describe_errors(err.errors())) from None


def describe_errors(errors: list[dict]) -> str:
    """One line naming every bad or unknown query parameter (pydantic/FastAPI error dicts)."""
    unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden")
    parts = []
    if unknown:
        parts.append(f"unknown query parameter(s) {', '.join(unknown)}")
    for error in errors:
        if error["type"] == "extra_forbidden":
            continue
        # FastAPI prefixes the location with "query"; a model-level check has none left
        loc = [str(p) for p in error["loc"] if p != "query"]
        message = error["msg"].removeprefix("Value error, ")
        shown = error.get("input")
        if loc and not isinstance(shown, dict):
            parts.append(f"{loc[-1]}: {message}, got {str(shown)[:80]!r}")
        else:
            parts.append(message)
    return "; ".join(parts)


def install_error_handlers(app) -> None:
    """The JSON errors both FastAPI apps answer with: a bad query (400, every bad parameter
    named) and an HttpError (its status and message)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def bad_query(request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe_errors(err.errors())}, status_code=400)

    @app.exception_handler(HttpError)
    async def http_error(request, err: HttpError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)


def check_variant(variant_id: str | None, known) -> str:
    """`variant_id` when it is well formed and `known(variant_id)`; else HttpError 400 (missing
    or malformed) or 404 (unknown), the message naming it."""
    if variant_id and not VARIANT_ID.match(variant_id):
        raise HttpError(400, f"variant must match {VARIANT_ID.pattern}, got {variant_id[:80]!r}")
    if not variant_id:
        raise HttpError(400, "variant is required")
    if not known(variant_id):
        raise HttpError(404, f"unknown variant {variant_id!r}; GET /v1/variants lists them")
    return variant_id
