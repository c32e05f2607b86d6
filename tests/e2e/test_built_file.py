"""End to end: build the real Gemma file with the real runtime stub and run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from llamapack.builder.gguf_header import read_header
from llamapack.runtime import fileformat as ff
from tests.support.built_file import Server, build_file, get_json, run_file

pytestmark = pytest.mark.e2e


def test_file_is_a_zip_and_an_executable(gemma_file, gemma_gguf):
    layout = ff.read_layout(gemma_file)
    assert layout.model_offset % ff.MODEL_ALIGNMENT == 0
    assert layout.manifest.model.architecture == "gemma3"
    assert layout.manifest.chat_template.to_json() == {
        "source": "builtin", "name": "gemma",
        "reason": "the GGUF has no template; llama.cpp's built-in one for gemma3",
    }  # fmt: skip
    listing = subprocess.run(["unzip", "-l", str(gemma_file)], capture_output=True, text=True)
    assert listing.returncode == 0 and gemma_gguf.name in listing.stdout
    assert os.access(gemma_file, os.X_OK)


def test_the_runtime_is_in_the_file_once(gemma_file, gemma_gguf, runtime_stub):
    """Beyond the model, the file holds the stub and a few KiB; PyInstaller's own
    reader, which scans from the end as the bootloader does, finds the stub's
    archive through the pointer: every entry, byte for byte."""
    from PyInstaller.archive.readers import CArchiveReader

    overhead = gemma_file.stat().st_size - gemma_gguf.stat().st_size
    assert overhead <= runtime_stub.stat().st_size + (1 << 20)
    in_file, in_stub = CArchiveReader(str(gemma_file)), CArchiveReader(str(runtime_stub))
    assert in_file.toc == in_stub.toc
    for name in ("PYZ.pyz", "base_library.zip"):
        assert in_file.extract(name) == in_stub.extract(name)


def test_version_and_info(gemma_file):
    version = run_file(gemma_file, "--version")
    assert version.returncode == 0 and version.stdout.startswith("llamapack ")
    info = run_file(gemma_file, "--info")
    assert info.returncode == 0
    assert json.loads(info.stdout) == ff.read_layout(gemma_file).manifest.to_json()


def test_help_lists_llamafile_flags(gemma_file):
    result = run_file(gemma_file, "--help")
    assert result.returncode == 0
    for flag in ("--server", "--nobrowser", "--host", "--port", "--ctx-size", "--threads",
                 "--prompt", "--n-predict", "--info", "--version"):  # fmt: skip
        assert flag in result.stdout


def test_prompt_mode_prints_a_completion(gemma_file):
    result = run_file(gemma_file, "-p", "The capital of France is", "-n", "12", "--temp", "0", "-t", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


def test_server_chat_and_clean_exit(server, gemma_file, gemma_gguf):
    server.wait_healthy()
    status, models = get_json(server.url + "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "gemma-3-270m-q4_k_m"
    status, reply = get_json(server.url + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16,
    })  # fmt: skip
    assert status == 200
    assert reply["choices"][0]["message"]["content"].strip()

    # Zero copy: the model is mapped from the built file itself, and nothing
    # the size of the model was unpacked into PyInstaller's temporary folder.
    pid = server.python_pid()
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    mapped = [line for line in maps if line.endswith(str(gemma_file.resolve()))]
    spans = [int(end, 16) - int(start, 16) for start, end in (line.split()[0].split("-") for line in mapped)]
    header = read_header(gemma_gguf)
    assert max(spans) >= header.data_end - header.data_offset  # every tensor byte, in place
    model_size = header.file_size
    temp_dirs = [Path(line.split()[-1]).parent for line in maps if "/_MEI" in line]
    assert temp_dirs, "expected PyInstaller's runtime folder"
    unpacked = sum(p.stat().st_size for p in temp_dirs[0].rglob("*") if p.is_file())
    assert unpacked < model_size / 2
    assert not list(temp_dirs[0].rglob("*.gguf"))

    code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err
    assert not temp_dirs[0].exists(), "PyInstaller's temporary folder must be removed"


def test_two_copies_share_one_mapping_of_the_file(gemma_file):
    first, second = Server(gemma_file), Server(gemma_file)
    try:
        first.wait_healthy()
        second.wait_healthy()
        inodes = set()
        for running in (first, second):
            for line in Path(f"/proc/{running.python_pid()}/maps").read_text().splitlines():
                if line.endswith(str(gemma_file.resolve())):
                    inodes.add(line.split()[4])
        assert len(inodes) == 1  # one file, one page cache
    finally:
        for running in (first, second):
            running.close()


def test_busy_port_is_a_clear_error(server, gemma_file):
    server.wait_healthy()
    result = run_file(gemma_file, "--server", "--nobrowser", "--port", str(server.port))
    assert result.returncode == 1
    assert "already in use" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_arguments_override_the_defaults(gemma_file):
    server = Server(gemma_file, "--alias", "my-model")
    try:
        server.wait_healthy()
        _, models = get_json(server.url + "/v1/models")
        assert models["data"][0]["id"] == "my-model"
    finally:
        server.close()


def test_bare_stub_runs_without_a_model(runtime_stub, gemma_gguf):
    version = subprocess.run([str(runtime_stub), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "llamapack" in version.stdout
    command = [str(runtime_stub), "-m", str(gemma_gguf), "-p", "Hello", "-n", "4", "-t", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([str(runtime_stub), "-p", "Hello"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no model" in missing.stderr


def test_bad_flag_values_are_one_line_errors(gemma_file):
    result = run_file(gemma_file, "--port", "99999")
    assert result.returncode == 1 and "--port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_file_cut_short_says_so(gemma_file, tmp_path):
    """An interrupted download: the end of the file (ZIP directory, archive copy) is gone.
    The bootloader still finds the stub's own archive, and the runtime refuses clearly."""
    cut = tmp_path / "partial-download"
    with gemma_file.open("rb") as whole, cut.open("wb") as part:
        part.write(whole.read(gemma_file.stat().st_size // 2))
    cut.chmod(0o755)
    result = run_file(cut, "-p", "Hello", "-n", "2")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "incomplete" in lines[0] and "download it again" in lines[0]


def test_a_model_that_does_not_match_its_manifest_is_refused(gemma_file, tmp_path):
    """Sizes and offsets are checked against the manifest before loading."""
    import zipfile

    damaged = tmp_path / "damaged"
    data = bytearray(gemma_file.read_bytes())
    layout = ff.read_layout(gemma_file)
    data[layout.model_offset : layout.model_offset + 4] = b"XXXX"  # the GGUF magic
    damaged.write_bytes(bytes(data))
    damaged.chmod(0o755)
    assert zipfile.is_zipfile(damaged)
    result = run_file(damaged, "-p", "Hello", "-n", "2")
    assert result.returncode == 1 and "download or copy the file again" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_over_4_gib_runs_with_the_stub_split_around_it(
    gemma_file, gemma_gguf, runtime_stub, tmp_path
):
    """No 32-bit cookie reaches back over 4 GiB: the model goes between the stub's
    image and its archive (runtime/fileformat/executables.py Stub.split). The model is
    Gemma with a sparse tail past its weights (llama.cpp reads only up to them)."""
    import shutil

    from PyInstaller.archive.readers import CArchiveReader

    big = tmp_path / "big.gguf"
    shutil.copyfile(gemma_gguf, big)
    size = (4 << 30) + (16 << 20)
    with big.open("r+b") as file:
        file.truncate(size)
    try:
        out = build_file(big, tmp_path / "big-model", "--runtime", str(runtime_stub))
    finally:
        big.unlink()  # the disk holds one copy at a time
    assert out.stat().st_size - size <= runtime_stub.stat().st_size + (1 << 20)  # the runtime once
    assert CArchiveReader(str(out)).toc == CArchiveReader(str(runtime_stub)).toc
    readelf = subprocess.run(["readelf", "-S", "-W", str(out)], capture_output=True, text=True)
    assert readelf.returncode == 0 and "pydata" in readelf.stdout and "Warning" not in readelf.stderr
    prompt = ("-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2")
    run = run_file(out, *prompt, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == run_file(gemma_file, *prompt).stdout
