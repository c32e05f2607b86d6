"""End to end: a built file says which engine runs it, and counts what it serves."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from llamapack.builder.cli import cli
from llamapack.runtime import fileformat as ff
from tests.support.built_file import Server, get_json, run_file

pytestmark = pytest.mark.e2e

KEY = "sesame"


def engine_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": engine: " in line]


def get_text(url: str, key: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_launch_says_once_which_engine_runs_and_props_agree(gemma_file):
    server = Server(gemma_file)
    try:
        server.wait_healthy()
        status, props = get_json(server.url + "/props")
        assert status == 200
    finally:
        code, err = server.stop()
    assert code == 0, err
    backend = props["backend"]
    (line,) = engine_lines(err)
    assert line == f"{gemma_file.name}: engine: {backend['summary']}"
    assert f"CPU {backend['cpu']['variant']}" in line and backend["cpu"]["variant"]
    assert "2 threads" in line and f"llama.cpp {backend['llama_cpp']['commit']}" in line
    assert backend["warnings"] == [] and "warning" not in err


def test_gpu_layers_without_a_gpu_are_a_warning(gemma_file):
    server = Server(gemma_file, "-ngl", "99")
    try:
        server.wait_healthy()
        _, props = get_json(server.url + "/props")
    finally:
        code, err = server.stop()
    assert code == 0, err
    (warning,) = props["backend"]["warnings"]
    assert "-ngl 99" in warning and "no GPU" in warning
    assert [line for line in err.splitlines() if ": warning: " in line] == [
        f"{gemma_file.name}: warning: {warning}"
    ]
    assert len(engine_lines(err)) == 1


def test_prompt_mode_names_the_engine_on_stderr_only(gemma_file):
    result = run_file(gemma_file, "-p", "Hello", "-n", "2", "-t", "2")
    assert result.returncode == 0, result.stderr
    assert len(engine_lines(result.stderr)) == 1
    assert ": engine: " not in result.stdout


def test_version_shows_the_llama_cpp_build(gemma_file):
    recorded = ff.read_layout(gemma_file).manifest.engine.llama_cpp
    assert recorded is not None
    summary = f"llama.cpp {recorded.commit} (ggml {recorded.version})"
    result = run_file(gemma_file, "--version")
    assert result.returncode == 0, result.stderr
    running, built = result.stdout.splitlines()[1:3]
    assert running == summary  # the stub carries the libraries the manifest names
    assert built.startswith("file built by llamapack ") and summary in built
    inspected = CliRunner().invoke(cli, ["inspect", str(gemma_file)])
    assert inspected.exit_code == 0 and summary in inspected.output


def test_metrics_and_slots_behind_the_api_key(gemma_file):
    server = Server(gemma_file, "--api-key", KEY, "--metrics")
    try:
        server.wait_healthy()
        for path in ("/metrics", "/slots"):
            assert get_text(server.url + path)[0] == 401
            assert get_text(server.url + path, KEY)[0] == 200
        status, text = get_text(server.url + "/metrics", KEY)
    finally:
        code, err = server.stop()
    assert status == 200 and code == 0, err
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert (
        samples[
            ("llamapack_http_requests_total", (("method", "GET"), ("route", "/slots"), ("status", "401")))
        ]
        == 1
    )
    assert samples[("llamapack_slots_total", ())] == 4


def test_a_small_context_takes_a_prompt_longer_than_its_batch(gemma_file):
    """llama.cpp caps the batch at a small -c (64) before it rounds the context up
    (256): a 60-word prompt fits the context but not one batch, and must be fed in
    several (it once aborted the process inside llama_decode)."""
    prompt = " ".join(f"word{i}" for i in range(60))
    result = run_file(gemma_file, "-c", "64", "-t", "2", "-n", "4", "--temp", "0", "-p", prompt)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
