"""`llamapack build --gpu-runtime cuda`: the CUDA runtime as xz members of the file,
listed in its manifest, checked by `verify`, kept by `upgrade`, and unpacked once
per user by the runtime. A stand-in for the compiled runtime (three small
libraries, packed by the builder's own code) stands where the hour-long CUDA build
would: the real one is tested end to end in tests/e2e/test_cuda.py."""

from __future__ import annotations

import json
import os
import random
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapack.builder import cuda
from llamapack.builder.cli import cli
from llamapack.runtime import fileformat as ff
from llamapack.runtime.llama import gpu
from tests.support.fakes import elf_stub

LIBRARIES = ("libcudart.so.13", "libcublas.so.13", "libggml-cuda.so")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def cuda_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A builder cache holding a packed "CUDA runtime": the libraries' bytes by name."""
    monkeypatch.setenv("LLAMAPACK_CACHE", str(tmp_path / "cache"))
    folder = cuda.cuda_dir()
    folder.mkdir(parents=True)
    rng = random.Random(7)
    contents = {}
    index = []
    for number, name in enumerate(LIBRARIES):
        data = bytes(rng.getrandbits(8) for _ in range(20_000 + number)) + b"\0" * 50_000
        source = tmp_path / name
        source.write_bytes(data)
        index.append(cuda._pack(source, folder))
        contents[name] = data
    (folder / cuda.PAYLOAD_INDEX).write_text(json.dumps(index))
    (folder / ".complete").write_text("")
    return contents


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub"
    path.write_bytes(elf_stub(toc=b"TOC" * 50))
    return path


def built(tiny_gguf: Path, stub: Path, out: Path, *extra: str) -> Path:
    code, output = run(
        "build", str(tiny_gguf), "-o", str(out), "--runtime", str(stub), "--gpu-runtime", "cuda", *extra
    )
    assert code == 0, output
    return out


def test_the_file_carries_the_runtime_after_the_model(cuda_cache, tiny_gguf, stub, tmp_path):
    out = built(tiny_gguf, stub, tmp_path / "model")
    layout = ff.read_layout(out)
    record = layout.manifest.gpu_runtime
    assert record is not None and record.backend == "cuda"
    assert [library.file for library in record.libraries] == list(LIBRARIES)  # load order kept
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # every member's CRC, the runtime's included
        names = archive.namelist()
        assert names == [
            tiny_gguf.name,
            *(f"gpu/cuda/{name}.xz" for name in LIBRARIES),
            "manifest.json",
            ".args",
        ]
        for library in record.libraries:
            info = archive.getinfo(library.member)
            assert info.compress_type == zipfile.ZIP_STORED and info.file_size == library.packed_size
            assert info.header_offset >= layout.model_offset + layout.model_size
    assert layout.model_offset % ff.MODEL_ALIGNMENT == 0
    code, output = run("verify", str(out))
    assert code == 0 and "OK:" in output, output
    code, output = run("inspect", str(out))
    assert "gpu runtime:   cuda (libcudart.so.13, libcublas.so.13, libggml-cuda.so;" in output, output


def test_the_runtime_unpacks_it_once_and_checks_it(cuda_cache, tiny_gguf, stub, tmp_path, monkeypatch):
    out = built(tiny_gguf, stub, tmp_path / "model")
    record = ff.read_layout(out).manifest.gpu_runtime
    assert record is not None
    payload = gpu.FilePayload(out, record)
    user_cache = tmp_path / "user-cache"
    paths = gpu.unpack_payload(payload, user_cache)
    assert [path.name for path in paths] == list(LIBRARIES)
    assert len({path.parent for path in paths}) == 1  # one folder: each finds the others
    assert all(path.read_bytes() == cuda_cache[path.name] for path in paths)
    assert all(os.access(path, os.X_OK) for path in paths)

    # Verified once: a later launch hashes nothing while sizes and times are unchanged.
    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path} again")

    monkeypatch.setattr(gpu, "_sha256", no_hashing)
    assert gpu.unpack_payload(payload, user_cache) == paths
    monkeypatch.undo()

    # A damaged copy (another size) is written again, never used.
    paths[1].write_bytes(b"damaged")
    assert gpu.unpack_payload(payload, user_cache) == paths
    assert paths[1].read_bytes() == cuda_cache[paths[1].name]
    assert not [
        path for path in paths[0].parent.iterdir() if path.name.startswith("lib") and path not in paths
    ]


def test_a_damaged_member_is_caught_by_verify_and_never_loaded(cuda_cache, tiny_gguf, stub, tmp_path):
    out = built(tiny_gguf, stub, tmp_path / "model")
    layout = ff.read_layout(out)
    record = layout.manifest.gpu_runtime
    assert record is not None
    with zipfile.ZipFile(out) as archive:
        info = archive.getinfo(record.libraries[2].member)
    with out.open("r+b") as raw:
        at = ff.member_data_offset(raw, info.header_offset) + 200
        raw.seek(at)
        byte = raw.read(1)
        raw.seek(at)
        raw.write(bytes([byte[0] ^ 0xFF]))
    code, output = run("verify", str(out))
    assert code == 1 and "MISMATCH: gpu/cuda/libggml-cuda.so.xz" in output, output
    with pytest.raises(OSError, match="libggml-cuda.so.xz in model is damaged"):
        gpu.unpack_payload(gpu.FilePayload(out, record), tmp_path / "user-cache")
    assert not (
        tmp_path / "user-cache" / gpu.UNPACKED_DIR / gpu.payload_key(record) / "libggml-cuda.so"
    ).exists()


def test_upgrade_puts_in_this_llamapacks_runtime(cuda_cache, tiny_gguf, stub, tmp_path):
    out = built(tiny_gguf, stub, tmp_path / "model")
    upgraded = tmp_path / "upgraded"
    code, output = run("upgrade", str(out), "-o", str(upgraded), "--runtime", str(stub))
    assert code == 0, output
    assert ff.read_layout(upgraded).manifest.gpu_runtime == ff.read_layout(out).manifest.gpu_runtime
    with zipfile.ZipFile(upgraded) as archive:
        assert archive.testzip() is None
        assert (
            archive.read("gpu/cuda/libcudart.so.13.xz")
            == (cuda.cuda_dir() / "libcudart.so.13.xz").read_bytes()
        )


def test_files_without_it_have_no_record(tiny_gguf, stub, tmp_path):
    code, output = run("build", str(tiny_gguf), "-o", str(tmp_path / "plain"), "--runtime", str(stub))
    assert code == 0, output
    manifest = json.loads(zipfile.ZipFile(tmp_path / "plain").read("manifest.json"))
    assert "gpu_runtime" not in manifest  # the JSON of earlier files, unchanged


@pytest.mark.parametrize("target", ["windows-x86_64", "linux-aarch64", "macos-arm64"])
def test_other_targets_are_refused_in_one_line(cuda_cache, tiny_gguf, stub, tmp_path, target):
    out = tmp_path / "model"
    code, output = run(
        "build",
        str(tiny_gguf),
        "-o",
        str(out),
        "--runtime",
        str(stub),
        "--target",
        target,
        "--gpu-runtime",
        "cuda",
    )
    assert code == 2, output
    assert output.strip().splitlines()[-1] == (
        f"Error: --gpu-runtime cuda is for linux-x86_64 files, not {target} "
        "(the others use the Vulkan or Metal backend they carry)"
    )
    assert "Traceback" not in output
    assert not list(tmp_path.glob("model*"))


def test_a_damaged_cache_is_one_line(cuda_cache, tiny_gguf, stub, tmp_path):
    (cuda.cuda_dir() / cuda.PAYLOAD_INDEX).write_text("[{}]")
    code, output = run(
        "build",
        str(tiny_gguf),
        "-o",
        str(tmp_path / "model"),
        "--runtime",
        str(stub),
        "--gpu-runtime",
        "cuda",
    )
    assert code == 1 and "the cached CUDA runtime in" in output and "delete it" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "model").exists()


def test_runtimes_that_share_ggml_cuda_but_not_cublas_unpack_apart():
    def library(name: str, sha256: str) -> ff.GpuLibrary:
        return ff.GpuLibrary(name, f"gpu/cuda/{name}.xz", sha256, 1, 1)

    older = ff.GpuRuntime(
        "cuda", (library("libcublas.so.13", "a" * 64), library("libggml-cuda.so", "c" * 64))
    )
    newer = ff.GpuRuntime(
        "cuda", (library("libcublas.so.13", "b" * 64), library("libggml-cuda.so", "c" * 64))
    )
    assert gpu.payload_key(older) != gpu.payload_key(newer)
    assert gpu.payload_key(older) == gpu.payload_key(ff.GpuRuntime("cuda", older.libraries))


def test_a_member_the_manifest_names_but_the_file_lacks_is_an_os_error(cuda_cache, tiny_gguf, stub, tmp_path):
    out = built(tiny_gguf, stub, tmp_path / "model")
    record = ff.read_layout(out).manifest.gpu_runtime
    assert record is not None
    missing = ff.GpuRuntime(
        "cuda", (*record.libraries[:-1], replace(record.libraries[-1], member="gpu/cuda/gone.xz"))
    )
    with pytest.raises(OSError, match="gpu/cuda/gone.xz in model is missing"):
        gpu.unpack_payload(gpu.FilePayload(out, missing), tmp_path / "user-cache")
