"""builder/gpu.py's choices that need no compiler: the opt-out and its own stub key."""

from __future__ import annotations

import platform
import sys

import pytest

from llamapack.builder import gpu, stub
from llamapack.builder.errors import RuntimeStubError

HOST_RECIPE = sys.platform.startswith("linux") and platform.machine() == "x86_64"
linux_x86_64 = pytest.mark.skipif(not HOST_RECIPE, reason="the host recipe's target")


@linux_x86_64
def test_a_host_that_cannot_build_the_gpu_backend_is_told_how_to_do_without(monkeypatch):
    def fails(log, target="linux-x86_64"):
        raise RuntimeStubError("building the Vulkan backend needs gpgv (not found)")

    monkeypatch.setattr(gpu, "ensure_vulkan", fails)
    with pytest.raises(RuntimeStubError) as raised:
        gpu.host_backends(print)
    assert str(raised.value) == (
        "building the Vulkan backend needs gpgv (not found) "
        "(LLAMAPACK_GPU_BACKENDS=none builds a runtime without the GPU backend)"
    )


def test_opting_out_builds_a_cpu_only_stub_under_its_own_key(monkeypatch):
    stub.stub_key.cache_clear()
    with_gpu = stub.stub_key()
    monkeypatch.setenv("LLAMAPACK_GPU_BACKENDS", "none")
    stub.stub_key.cache_clear()
    try:
        assert gpu.host_backends(print) == []
        assert stub.stub_key() != with_gpu
    finally:
        stub.stub_key.cache_clear()
