"""Which engine runs (runtime/llama/devices.py) and what it has done (runtime/server/metrics.py),
on the real Gemma model behind the real app."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamapack.builder.assemble import engine_info
from llamapack.runtime import cli
from llamapack.runtime.llama.cpu import CpuBackend, cpu_backend
from llamapack.runtime.llama.devices import (
    Device,
    EngineReport,
    LlamaCppBuild,
    devices,
    instruction_set,
    llama_cpp_build,
    offload_warnings,
)
from llamapack.runtime.llama.gpu import GpuChoice
from tests.support.api import gemma_app, gemma_backend, wait_ready

KEY = "sesame"
CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "ignore_eos": True}
# One line of the text format: a sample, or a HELP/TYPE comment (what the parser
# forgives, e.g. stray spaces, this does not).
_SAMPLE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.eE+]+|NaN')
_COMMENT = re.compile(r"# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+")


@pytest.fixture(scope="module")
def backend(gemma_gguf):
    shared = gemma_backend(gemma_gguf, parallel=2)
    yield shared
    shared.close()


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels -> value, after checking every line against the format."""
    for line in text.splitlines():
        assert _COMMENT.fullmatch(line) or _SAMPLE.fullmatch(line), line
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def get_metrics(client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(await response.text())


# ------------------------------------------------------------ what runs


def test_the_llama_cpp_build_is_read_from_ggml():
    build = llama_cpp_build()
    assert re.fullmatch(r"\d+\.\d+\.\d+", build.version)
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", build.commit)
    assert build.summary() == f"llama.cpp {build.commit} (ggml {build.version})"


def test_version_shows_the_llama_cpp_build():
    text = cli.version_text(None)
    assert text.startswith("llamapack ")
    assert llama_cpp_build().summary() in text


def test_files_record_the_llama_cpp_build_they_are_built_with():
    assert engine_info().llama_cpp == llama_cpp_build()
    assert engine_info("windows-x86_64").llama_cpp is None  # its stub was built elsewhere
    assert "llama_cpp" not in engine_info("windows-x86_64").to_json()


def test_the_report_names_the_cpu_variant_that_runs(backend):
    report = backend.engine_report
    assert report.cpu == cpu_backend()
    assert any(device.type == "CPU" for device in report.devices)
    assert report.devices == devices()
    line = report.line()
    assert line.startswith(f"CPU {cpu_backend().variant}")
    assert f"{backend.engine.n_threads} threads" in line and llama_cpp_build().summary() in line
    assert report.gpu_layers == 0 and report.warnings == ()


def test_gpu_offload_without_a_gpu_is_a_warning(gemma_gguf):
    offloading = gemma_backend(gemma_gguf, parallel=1, ctx_size=512, n_gpu_layers=99)
    try:
        report = offloading.engine_report
        assert report.gpu_layers_requested == 99 and report.gpu_layers == 0
        assert len(report.warnings) == 1 and "-ngl 99" in report.warnings[0]
        assert "no GPU" in report.warnings[0]
    finally:
        offloading.close()


def test_a_gpu_that_takes_layers_leads_the_line():
    """The line's shape with a GPU, on described devices (this machine has none)."""
    cpu = CpuBackend("zen4", None, "AMD EPYC", ("AVX2", "AVX512", "AVX512_VBMI"), ("CPU_REPACK",))
    gpu = Device("CUDA0", "NVIDIA H100 80GB HBM3", "GPU", 80 << 30, 79 << 30)
    report = EngineReport(
        LlamaCppBuild("0.25.3", "0c1e570"),
        cpu,
        (gpu, Device("CPU", "AMD EPYC", "CPU")),
        threads=2,
        gpu_layers_requested=99,
        model_layers=18,
        warnings=offload_warnings(99, (gpu,)),
    )
    assert report.line() == (
        "CUDA0 (NVIDIA H100 80GB HBM3, 79.0 of 80.0 GiB free): 19 layers, CPU zen4 (AVX-512) on AMD EPYC, "
        "2 threads, llama.cpp 0c1e570 (ggml 0.25.3)"
    )
    assert report.warnings == ()
    placed = dataclasses.replace(report, layers_by_device={"CUDA0": 12, "CPU": 7})
    assert placed.line().startswith(
        "CUDA0 (NVIDIA H100 80GB HBM3, 79.0 of 80.0 GiB free): 12 of 19 layers, CPU"
    )


def test_no_gpu_ends_the_line_with_the_reason():
    cpu = CpuBackend("haswell", None, "Intel", ("AVX2",), ())
    report = EngineReport(
        LlamaCppBuild("0.25.3", "0c1e570"),
        cpu,
        (Device("CPU", "Intel", "CPU"),),
        threads=4,
        gpu=GpuChoice("auto", reason="Vulkan: no working Vulkan driver"),
    )
    assert report.line() == (
        "CPU haswell (AVX2) on Intel, 4 threads, llama.cpp 0c1e570 (ggml 0.25.3), "
        "no GPU (Vulkan: no working Vulkan driver)"
    )
    assert report.as_dict()["gpu"] == {
        "requested": "auto",
        "backend": None,
        "reason": "Vulkan: no working Vulkan driver",
    }


def test_instruction_sets_are_named_as_people_say_them():
    assert instruction_set(("SSE3", "AVX", "AVX2", "AVX512", "AVX512_BF16")) == "AVX-512"
    assert instruction_set(("SSE3", "AVX", "AVX2", "REPACK")) == "AVX2"
    assert instruction_set(("NEON", "DOTPROD", "SVE_CNT=16")) == "NEON dotprod"
    assert instruction_set(()) == ""


async def test_props_reports_the_backend(client, backend):
    props = await (await client.get("/props")).json()
    assert props["backend"] == backend.engine_report.as_dict()
    assert props["backend"]["cpu"]["variant"] == cpu_backend().variant
    assert props["backend"]["summary"] == backend.engine_report.line()
    assert props["backend"]["warnings"] == []


# ------------------------------------------------------------ metrics


async def test_metrics_parse_and_move_after_a_request(client, backend):
    before = await get_metrics(client)
    reply = await (await client.post(CHAT, json=HELLO)).json()
    usage = reply["usage"]
    after = await get_metrics(client)

    route = (("method", "POST"), ("route", CHAT), ("status", "200"))
    assert (
        after["llamapack_http_requests_total"][route]
        == before["llamapack_http_requests_total"].get(route, 0) + 1
    )
    metrics_route = (("method", "GET"), ("route", "/metrics"), ("status", "200"))
    assert after["llamapack_http_requests_total"][metrics_route] >= 1

    def moved(name: str) -> float:
        return after[name][()] - before[name][()]

    assert moved("llamapack_requests_finished_total") == 1
    assert moved("llamapack_prompt_tokens_total") == usage["prompt_tokens"]
    assert moved("llamapack_generated_tokens_total") == usage["completion_tokens"]
    assert after["llamapack_decode_tokens_per_second"][()] > 0
    assert after["llamapack_prompt_tokens_per_second"][()] > 0
    assert after["llamapack_slots_total"][()] == backend.engine.n_parallel == 2
    assert after["llamapack_slots_busy"][()] == 0
    assert after["llamapack_queue_length"][()] == 0
    assert after["llamapack_model_loaded"][()] == 1
    (info,) = after["llamapack_info"]
    assert dict(info)["cpu_variant"] == cpu_backend().variant
    assert dict(info)["llama_cpp"] == llama_cpp_build().commit


async def test_unknown_paths_share_one_label(client):
    for path in ("/no/such/a", "/no/such/b"):
        assert (await client.get(path)).status == 404
    counts = (await get_metrics(client))["llamapack_http_requests_total"]
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] >= 2
    assert not any("/no/such" in dict(labels)["route"] for labels in counts)


async def test_slots_show_a_busy_slot_during_a_stream(client, backend):
    idle = await (await client.get("/slots")).json()
    assert [slot["state"] for slot in idle] == ["idle", "idle"]
    response = await client.post(CHAT, json={
        **HELLO, "max_tokens": 4000, "ignore_eos": True, "stream": True,
    })  # fmt: skip
    for _ in range(3):  # past its prompt, generating
        await response.content.readline()
    slots = await (await client.get("/slots")).json()
    busy = [slot for slot in slots if slot["state"] == "processing"]
    assert len(busy) == 1 and busy[0]["is_processing"]
    assert busy[0]["prompt_tokens"] > 0 and busy[0]["generated_tokens"] >= 1
    assert busy[0]["n_ctx"] == backend.engine.n_ctx
    assert set(busy[0]) == {
        "id", "state", "is_processing", "n_ctx", "prompt_tokens", "cached_tokens", "generated_tokens",
    }  # fmt: skip
    busy_gauge = (await get_metrics(client))["llamapack_slots_busy"][()]
    assert busy_gauge == 1
    response.close()
    for _ in range(500):  # the server notices at its next write
        if backend.engine.busy_slots == 0:
            break
        await asyncio.sleep(0.02)
    assert [slot["state"] for slot in await (await client.get("/slots")).json()] == ["idle", "idle"]


async def test_metrics_and_slots_want_the_api_key(aiohttp_client, backend):
    client = await aiohttp_client(gemma_app(backend, api_key=KEY))
    await wait_ready(client)
    for path in ("/metrics", "/slots"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.get(path, headers={"Authorization": f"Bearer {KEY}"})).status == 200
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    counts = parse_metrics(await response.text())["llamapack_http_requests_total"]
    assert counts[(("method", "GET"), ("route", "/slots"), ("status", "401"))] == 2
