"""builder/gpu.py's choices that need no compiler: the opt-out and its own stub key."""

from __future__ import annotations

import hashlib
import lzma
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

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


# ------------------------------------------------------------ the signed index


def _release(suite: str, packages_sha256: str) -> str:
    return (
        f"Origin: Debian\nSuite: stable\nCodename: {suite}\nSHA256:\n"
        f" {packages_sha256} 123 main/binary-amd64/Packages.xz\n"
    )


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A stand-in for Debian's mirror: a throwaway archive key, files served from a dict."""
    if shutil.which("gpg") is None or shutil.which("gpgv") is None:
        pytest.fail("gpg and gpgv are needed (Debian: gpg, gpgv)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    key = ["--quick-gen-key", "Test Archive <archive@example.org>", "ed25519", "sign", "never"]
    subprocess.run([*gpg, *key], check=True, env=env, capture_output=True)
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(subprocess.run([*gpg, "--export"], check=True, env=env, capture_output=True).stdout)
    monkeypatch.setattr(gpu, "KEYRING", keyring)
    files: dict[str, bytes] = {}

    def serve(url: str, path: Path, sha256: str | None) -> None:
        data = files[url.removeprefix(gpu.MIRROR + "/")]
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeStubError(f"{url}: SHA-256 does not match the signed index")
        path.write_bytes(data)

    monkeypatch.setattr(gpu, "_download", serve)

    def sign(text: str) -> bytes:
        return subprocess.run([*gpg, "--clearsign"], input=text.encode(), check=True, env=env,
                              capture_output=True).stdout  # fmt: skip

    yield files, sign
    # gpg started an agent for this home: it would outlive the test.
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


def fresh(tmp_path: Path, name: str) -> Path:
    """A work folder of its own, as each real fetch gets."""
    folder = tmp_path / name
    folder.mkdir()
    return folder


def _packages(version: str) -> bytes:
    stanzas = [
        f"Package: {name}\nArchitecture: amd64\nVersion: {version}\nFilename: pool/{name}.deb\nSHA256: 00\n"
        for name in gpu.TOOLCHAIN_PACKAGES
    ]
    return lzma.compress("\n".join(stanzas).encode())


def test_only_what_the_archive_key_signed_is_believed(mirror, tmp_path):
    files, sign = mirror
    genuine, forged = _packages("1.0"), _packages("6.6.6-evil")
    files["dists/trixie/main/binary-amd64/Packages.xz"] = genuine
    signed = sign(_release("trixie", hashlib.sha256(genuine).hexdigest()))
    # Text after the signature passes gpgv too: a forged hash there must not be read.
    files["dists/trixie/InRelease"] = signed + _release("trixie", hashlib.sha256(forged).hexdigest()).encode()
    index = gpu._signed_packages_index(fresh(tmp_path, "first"))
    assert index["glslc"]["Version"] == "1.0"
    files["dists/trixie/main/binary-amd64/Packages.xz"] = forged
    with pytest.raises(RuntimeStubError, match="SHA-256"):
        gpu._signed_packages_index(fresh(tmp_path, "second"))


def test_a_release_file_for_another_suite_or_unsigned_is_refused(mirror, tmp_path):
    files, sign = mirror
    packages = _packages("1.0")
    files["dists/trixie/main/binary-amd64/Packages.xz"] = packages
    files["dists/trixie/InRelease"] = sign(_release("bookworm", hashlib.sha256(packages).hexdigest()))
    with pytest.raises(RuntimeStubError, match="not Debian trixie's"):
        gpu._signed_packages_index(fresh(tmp_path, "first"))
    files["dists/trixie/InRelease"] = _release("trixie", hashlib.sha256(packages).hexdigest()).encode()
    with pytest.raises(RuntimeStubError, match=r"^gpgv \(Debian trixie InRelease\) failed"):
        gpu._signed_packages_index(fresh(tmp_path, "second"))


def test_integer_literals_made_16_bit_floats_are_written_as_float_literals(tmp_path):
    (tmp_path / "a.comp").write_text(
        "data_d[i] = D_TYPE(0);\nf16vec4 z = f16vec4(0, 1, -2, 3);\nACC_TYPE s = ACC_TYPE(16) * x;\n"
        "FLOAT_TYPEV4 v = FLOAT_TYPEV4(0);\nuint n = uint(0);\nu16vec4 q = u16vec4(0);\n"
        "D_TYPE y = D_TYPE(x);\nfloat16_t h = float16_t(0.5);\n"
    )
    (tmp_path / "b.glsl").write_text("#define ZERO float16_t(0)\n")
    (tmp_path / "c.txt").write_text("D_TYPE(0)\n")
    assert gpu.exact_half_constants(tmp_path) == 5
    assert (tmp_path / "a.comp").read_text() == (
        "data_d[i] = D_TYPE(0.0);\nf16vec4 z = f16vec4(0.0, 1.0, -2.0, 3.0);\n"
        "ACC_TYPE s = ACC_TYPE(16.0) * x;\n"
        "FLOAT_TYPEV4 v = FLOAT_TYPEV4(0.0);\nuint n = uint(0);\nu16vec4 q = u16vec4(0);\n"
        "D_TYPE y = D_TYPE(x);\nfloat16_t h = float16_t(0.5);\n"
    )
    assert (tmp_path / "b.glsl").read_text() == "#define ZERO float16_t(0.0)\n"
    assert (tmp_path / "c.txt").read_text() == "D_TYPE(0)\n"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("heap_dependent", [False, True])
def test_the_checked_glslc_stops_output_that_depends_on_uninitialized_memory(tmp_path, heap_dependent):
    """A stand-in glslc whose output is (or is not) what its heap held, as trixie's was
    for tri.comp: the wrapper compiles twice with different heap fillings and refuses
    output that differs, without writing a second dependency file."""
    toolchain = tmp_path / "toolchain"
    toolchain.mkdir()
    calls = tmp_path / "calls"
    (toolchain / "glslc").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; [ "$1" = -MF ] && echo deps > "$2"; shift; done\n'
        f'echo "spirv {"$MALLOC_PERTURB_" if heap_dependent else ""}" > "$out"\n'
    )
    (toolchain / "glslc").chmod(0o755)
    checked = gpu.checked_glslc(tmp_path, toolchain)
    out = tmp_path / "tri_f16.spv"
    command = [str(checked), "-fshader-stage=compute", "tri.comp", "-o", str(out), "-O", "-MD", "-MF",
               str(tmp_path / "tri.cpp.d"), "-DD_TYPE=float16_t"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    first, second = calls.read_text().splitlines()
    assert "-MF" in first and "-MD" not in second and "-MF" not in second and f"{out}.check" in second
    assert not (tmp_path / "tri_f16.spv.check").exists()
    if heap_dependent:
        assert result.returncode == 1 and not out.exists()
        assert result.stderr.startswith(f"glslc folded a constant in {out} from memory it never wrote")
    else:
        assert result.returncode == 0 and result.stderr == "" and out.read_text() == "spirv \n"
    feature_test = [str(checked), "-o", "-", "feature.comp"]
    passthrough = subprocess.run(feature_test, capture_output=True, text=True, cwd=tmp_path)
    assert passthrough.returncode == 0 and len(calls.read_text().splitlines()) == 3
