"""`POST /v1/classify` of a Router: plan the request, run the head, carry the frame over the
(emulated) link, run the tail, and account for every millisecond of it."""

import time
from collections.abc import Callable

import numpy as np
import torch
from fastapi import Request
from ray.serve.handle import DeploymentHandle

from pipeline.clock import ms_since
from pipeline.codec import CodecConfig, encode_frame, variant_tag
from pipeline.cost import Link, latency_breakdown
from pipeline.data import DataInfo, normalize
from serve.inputs import decode_pixels, read_body
from serve.link_board import LinkBoardClient
from serve.link_follow import LinkFollower
from serve.planner import constraint_key
from serve.planning import Plans
from serve.queries import ClassifyQuery
from serve.retries import call_with_retries
from serve.settings import AppArgs


class Classifier:
    """One Router replica's way through a classification: head hop, link, tail hop."""

    def __init__(self, args: AppArgs, info: DataInfo, codec: CodecConfig, plans: Plans,
                 follower: LinkFollower, board: LinkBoardClient, head: DeploymentHandle,
                 tail: Callable[[], DeploymentHandle], replica: str):
        self.args, self.info, self.codec = args, info, codec
        self.plans, self.follower, self.board = plans, follower, board
        self.head, self.tail, self.replica = head, tail, replica

    async def call(self, handle: DeploymentHandle, variant_id: str, method: str, *args) -> tuple[dict, int]:
        target = getattr(handle.options(multiplexed_model_id=variant_id), method)
        return await call_with_retries(lambda: target.remote(*args), method, self.args.retries,
                                       self.args.call_timeout_s)

    def encode_input(self, variant_id: str, pixels) -> tuple[bytes, float]:
        """The wire frame of the normalised input pixels (what the head sends at split `input`)."""
        start = time.perf_counter_ns()
        with torch.inference_mode():
            x = normalize(torch.from_numpy(np.ascontiguousarray(pixels)), self.info)
        return encode_frame(x, self.codec, variant_tag(variant_id)), ms_since(start)

    async def run(self, start: int, query: ClassifyQuery, request: Request) -> dict:
        """The answer to one request (`start`: when it arrived, perf_counter_ns)."""
        floor, budget = self.plans.constraint(query)
        link_id, uplink = query.link, query.uplink_bps
        forced = query.variant is not None or query.split is not None
        if forced:
            vid = self.plans.variant(query.variant)
            split = self.plans.split(vid, query.split)
        body = await read_body(request.stream(), request.headers.get("content-length"),
                               self.args.max_body_bytes)
        parse_start = time.perf_counter_ns()
        pixels = decode_pixels(body, request.headers.get("content-type"), query.shape,
                               self.info.in_channels, self.info.input_size, self.args.max_image_pixels)
        parse_ms = ms_since(parse_start)
        plan_start = time.perf_counter_ns()
        key = f"{link_id}|{constraint_key(floor, budget)}"
        state = await self.board.observe(link_id, uplink, None if forced else key)
        link = Link(state["estimate_bps"], self.follower.rtt_ms())
        kept = switched = False
        planner = self.plans.planner
        if forced:
            candidate = planner.candidate(vid, split)
            breakdown = latency_breakdown(candidate.head_ms, candidate.bytes_sent, candidate.tail_ms, link)
        else:
            choice = planner.decide(self.plans.previous(state["choice"]), link, floor, budget)
            candidate, breakdown = choice.candidate, choice.breakdown
            kept, switched = choice.kept, choice.switched
            vid, split = candidate.variant_id, candidate.split
            if state["choice"] != (vid, split):
                self.board.remember(key, vid, split)
        plan_ms = ms_since(plan_start)
        self.follower.maybe_probe(link_id, state["age_s"])

        timings = {"parse": parse_ms, "plan": plan_ms}
        head_start = time.perf_counter_ns()
        if split == "input":
            # Nothing runs before the split: encode the pixels here and skip the head's hop.
            frame, encode_ms = self.encode_input(vid, pixels)
            head, retries = {"head_ms": 0.0, "encode_ms": encode_ms}, 0
        else:
            head, retries = await self.call(self.head, vid, "run", split, pixels.tobytes(), pixels.shape)
            frame = head["frame"]
        timings.update(head=head["head_ms"], encode=head["encode_ms"], head_call=ms_since(head_start))
        bytes_sent = 0 if frame is None else len(frame)
        link_ms = decode_ms = tail_ms = 0.0
        given_up = limit_ms = None
        if frame is None:
            logits = head["logits"][0]
        else:
            link_start = time.perf_counter_ns()
            if self.follower.link.enabled:
                given_up, limit_ms = await self.follower.carry(link_id, bytes_sent, floor,
                                                               deadline=not forced)
            link_ms = ms_since(link_start)
        given_up_from = None
        if given_up is not None:  # the frame missed its deadline: the device finishes it
            given_up_from = {"variant": vid, "split": split}
            candidate = given_up
            vid, split = candidate.variant_id, candidate.split
            head, fallback_retries = await self.call(self.head, vid, "run", split, pixels.tobytes(),
                                                     pixels.shape)
            retries += fallback_retries
            logits = head["logits"][0]
            timings.update(head=timings["head"] + head["head_ms"])
        elif frame is not None:
            tail_start = time.perf_counter_ns()
            tail, tail_retries = await self.call(self.tail(), vid, "finish", frame, split)
            tail_call_ms = ms_since(tail_start)
            retries += tail_retries
            if not self.follower.link.enabled and self.args.measure_handoff:
                handoff_s = max(0.0, tail_call_ms - tail["server_ms"]) / 1000.0
                self.board.add_transfer(link_id, bytes_sent, handoff_s, self.args.rtt_ms)
            logits = tail["logits"][0]
            decode_ms, tail_ms = tail["decode_ms"], tail["tail_ms"]
            timings.update(tail_call=tail_call_ms)
        timings.update(link=link_ms, decode=decode_ms, tail=tail_ms)
        timings["total"] = ms_since(start)
        work = timings["head"] + timings["encode"] + link_ms + decode_ms + tail_ms
        timings["overhead"] = max(0.0, timings["total"] - work)
        prediction = max(range(len(logits)), key=logits.__getitem__)
        return {
            "prediction": prediction, "label": self.info.classes[prediction], "logits": logits,
            "variant": vid, "split": split, "strategy": candidate.strategy,
            "accuracy": candidate.accuracy, "bytes_sent": bytes_sent, "link": link_id,
            "bandwidth_bps": link.bandwidth_bps, "forced": forced, "kept": kept, "switched": switched,
            "past_deadline": given_up is not None, "deadline_ms": limit_ms, "given_up_from": given_up_from,
            "planned_ms": {"device": breakdown.device_ms, "transfer": breakdown.transfer_ms,
                           "edge": breakdown.edge_ms, "total": breakdown.total_ms},
            "timings_ms": timings, "retries": retries, "router": self.replica,
        }
