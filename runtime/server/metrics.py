"""`GET /metrics` (Prometheus text format) and `GET /slots` (llama-server's slot list).

HTTP requests are counted in an `on_response_prepare` hook: it sees every answer,
including errors made by middleware and aiohttp's own 404s and 500s, with the
status actually sent. Token totals and throughput come from the engine's
`EngineStats` (runtime/engine/stats.py), queue and slots from the engine itself.
Both routes sit behind `--api-key` like the rest of the API (server.py's guard):
slot contents and request counts are nobody else's business.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable

import llama_cpp
from aiohttp import web

from llamapack.runtime import __version__
from llamapack.runtime.engine.loop import Engine
from llamapack.runtime.engine.stats import EngineStats
from llamapack.runtime.server.common import CONFIG, STATE, NotServed, backend_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "llamapack_"
# llama-server's metric names, served beside ours so its dashboards work unchanged.
_LLAMACPP_PREFIX = "llamacpp:"
_PROCESS_START = time.time()
# A path no route matched is counted under this label, so probing random URLs
# cannot grow the metric without bound.
UNMATCHED_ROUTE = "unmatched"

Labels = tuple[tuple[str, str], ...]


class HttpCounts:
    """Requests answered, by (route, method, status). Only the event loop writes it."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str, int]] = collections.Counter()

    def count(self, route: str, method: str, status: int) -> None:
        self.counts[(route, method, status)] += 1


HTTP_COUNTS = web.AppKey("http_counts", HttpCounts)


def add_metrics_routes(app: web.Application) -> None:
    """The two routes and the response hook that counts requests."""
    app[HTTP_COUNTS] = HttpCounts()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/slots", slots)
    app.on_response_prepare.append(_count_response)


async def _count_response(request: web.Request, response: web.StreamResponse) -> None:
    counts = request.app.get(HTTP_COUNTS)
    if counts is not None:
        counts.count(route_label(request), request.method, response.status)


def route_label(request: web.Request) -> str:
    """The route's pattern ("/v1/chat/completions", "/static/"), not the raw path."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical


# ---------------------------------------------------------------- routes


async def metrics(request: web.Request) -> web.Response:
    if not request.app[CONFIG].metrics:
        raise NotServed("metrics are off: start the server with --metrics")
    text = render(request.app)
    headers = {"Content-Type": CONTENT_TYPE, "Process-Start-Time-Unix": str(int(_PROCESS_START))}
    return web.Response(body=text.encode(), headers=headers)


async def slots(request: web.Request) -> web.Response:
    if not request.app[CONFIG].slots:
        raise NotServed("the slots endpoint is off: start the server without --no-slots")
    backend = backend_of(request)
    return web.json_response([state.as_dict() for state in backend.engine.slot_states()])


# ---------------------------------------------------------------- format


def render(app: web.Application) -> str:
    """Every metric, in Prometheus' text exposition format 0.0.4."""
    out: list[str] = []
    backend = app[STATE].backend
    info: dict[str, str] = {"llamapack": __version__, "llama_cpp_python": llama_cpp.__version__}
    if backend is not None:
        report = backend.engine_report
        info["llama_cpp"] = report.build.commit
        info["cpu_variant"] = report.cpu.variant
        info["devices"] = ",".join(d.name for d in report.devices)
    _family(
        out, "info", "gauge", "The engine that runs: versions, CPU variant, devices.", [(_labels(info), 1)]
    )
    _family(out, "model_loaded", "gauge", "1 once the model can generate.", [((), int(backend is not None))])
    counts = app[HTTP_COUNTS].counts if HTTP_COUNTS in app else collections.Counter()
    _family(
        out,
        "http_requests_total",
        "counter",
        "HTTP requests answered, by route, method and status.",
        [
            (_labels({"route": route, "method": method, "status": str(status)}), n)
            for (route, method, status), n in sorted(counts.items())
        ],
    )
    stats_kept = app[STATE].stats  # outlives a backend freed by --sleep-idle-seconds
    if backend is None:
        if stats_kept is not None:
            _llamacpp_families(out, stats_kept, None)
        return "".join(out)
    engine = backend.engine
    stats = engine.stats.snapshot()
    families: list[tuple[str, str, str, float]] = [
        ("requests_finished_total", "counter", "Generation requests that ended.", stats.requests_finished),
        ("prompt_tokens_total", "counter", "Prompt tokens of finished requests, cached ones included.",
         stats.prompt_tokens),
        ("prompt_tokens_cached_total", "counter", "Prompt tokens whose KV cache was reused, not evaluated.",
         stats.cached_tokens),
        ("generated_tokens_total", "counter", "Tokens generated by finished requests.",
         stats.generated_tokens),
        ("prompt_tokens_per_second", "gauge", "Prompt evaluation speed over the recent finished requests.",
         stats.prompt_tokens_per_second),
        ("decode_tokens_per_second", "gauge", "Generation speed over the recent finished requests.",
         stats.decode_tokens_per_second),
        ("queue_length", "gauge", "Requests waiting for a free slot.", engine.queue_length),
        ("slots_busy", "gauge", "Slots processing a request.", engine.busy_slots),
        ("slots_total", "gauge", "Slots (requests decoded together, --parallel).", engine.n_parallel),
    ]  # fmt: skip
    for name, kind, help_text, value in families:
        _family(out, name, kind, help_text, [((), value)])
    _llamacpp_families(out, engine.stats, engine)
    return "".join(out)


def _llamacpp_families(out: list[str], engine_stats: EngineStats, engine: Engine | None) -> None:
    """llama-server's own metrics (tools/server/server-context.cpp), same names and meanings:
    the throughput gauges cover the time since the previous scrape."""
    stats = engine_stats.snapshot()
    prompt_rate, predicted_rate = engine_stats.take_window()
    busy, waiting = (engine.busy_slots, engine.queue_length) if engine else (0, 0)
    evaluated = stats.prompt_tokens - stats.cached_tokens
    families: list[tuple[str, str, str, float]] = [
        ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", evaluated),
        ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache.",
         stats.cached_tokens),
        ("prompt_seconds_total", "counter", "Prompt process time", stats.prompt_ms / 1000.0),
        ("tokens_predicted_total", "counter", "Number of generation tokens processed.",
         stats.generated_tokens),
        ("tokens_predicted_seconds_total", "counter", "Predict process time", stats.predicted_ms / 1000.0),
        ("n_decode_total", "counter", "Total number of llama_decode() calls", stats.decodes),
        ("n_tokens_max", "counter", "Largest observed n_tokens.", stats.largest_batch),
        # No speculative decoding here: always 0, present for llama-server's dashboards.
        ("spec_decode_num_draft_tokens_total", "counter", "Draft tokens generated.", 0),
        ("spec_decode_num_accepted_tokens_total", "counter", "Draft tokens accepted.", 0),
        ("spec_decode_num_drafts_total", "counter", "Drafts generated.", 0),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.", prompt_rate),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s.", predicted_rate),
        ("requests_processing", "gauge", "Number of requests processing.", busy),
        ("requests_deferred", "gauge", "Number of requests deferred.", waiting),
        ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call",
         stats.busy_slot_decodes / stats.decodes if stats.decodes else 0.0),
    ]  # fmt: skip
    for name, kind, help_text, value in families:
        _family(out, name, kind, help_text, [((), value)], prefix=_LLAMACPP_PREFIX)


def _family(
    out: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[Labels, float]],
    prefix: str = _PREFIX,
) -> None:
    out.append(f"# HELP {prefix}{name} {help_text}\n# TYPE {prefix}{name} {kind}\n")
    for labels, value in samples:
        rendered = ",".join(f'{key}="{_escape(text)}"' for key, text in labels)
        out.append(
            f"{prefix}{name}{{{rendered}}} {_number(value)}\n"
            if labels
            else f"{prefix}{name} {_number(value)}\n"
        )


def _labels(values: dict[str, str]) -> Labels:
    return tuple(values.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
