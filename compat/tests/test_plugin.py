"""compat.plugin inside a pytest run of a small stand-in for llama.cpp's suite: the
same `utils` names the plugin patches, the same conftest, a fake server binary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compat.junit import Outcome, read_junit
from compat.verdicts import NOT_APPLICABLE, OURS, PEER

ROOT = Path(__file__).resolve().parents[2]

UTILS = """
import os
import subprocess
import types

TMP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tmp")


class _Session:
    def request(self, method, url, *args, **kwargs):
        return "fetched " + url


requests = types.SimpleNamespace(sessions=types.SimpleNamespace(Session=_Session))
requests.get = lambda url: _Session().request("GET", url)


class ServerProcess:
    model_hf_repo = "ggml-org/models"
    model_hf_file = "tinyllamas/stories260K.gguf"
    model_file = model_url = model_draft = mmproj_url = lora_files = None
    models_dir = models_preset = log_path = process = None
    jinja = False
    server_port = 8080

    def stop(self):
        self.stopped = True

    def start(self, timeout_seconds=60):
        self.args = [os.environ["LLAMA_SERVER_BIN_PATH"]]
        if self.model_file:
            self.args += ["--model", self.model_file]
        if self.model_hf_repo:
            self.args += ["--hf-repo", self.model_hf_repo]
        self.args.append("--jinja" if self.jinja else "--no-jinja")
        log = open(self.log_path, "w") if self.log_path else None
        code = subprocess.run(self.args, stdout=log, stderr=log).returncode
        if code:
            raise RuntimeError(f"Server process died with return code {code}")


class ServerPreset:
    @staticmethod
    def load_all():
        raise AssertionError("load_all downloads every preset's model")

    @staticmethod
    def tinyllama2():
        server = ServerProcess()
        server.model_hf_repo = "ggml-org/test-model-stories260K"
        server.model_hf_file = None
        return server

    @staticmethod
    def bert_bge_small():
        server = ServerProcess()
        server.model_hf_file = "bert-bge-small/ggml-model-f16.gguf"
        return server

    @staticmethod
    def router():
        server = ServerProcess()
        server.model_hf_repo = server.model_hf_file = None
        return server


def download_file(url, output_file_path=None):
    raise AssertionError("download_file downloads")
"""

CONFTEST = """
import pytest
from utils import *


@pytest.fixture(scope="session", autouse=True)
def load_server_presets():
    ServerPreset.load_all()
"""

TESTS = """
import os
import pytest
from utils import *

server = ServerPreset.tinyllama2()  # at import, as the suite's modules do


def test_serves_the_swapped_model():
    server = ServerPreset.tinyllama2()
    server.jinja = True
    server.start()
    model = ["--model", os.environ["COMPAT_MODEL"]] if "COMPAT_MODEL" in os.environ else []
    assert server.args == [os.environ["LLAMA_SERVER_BIN_PATH"], *model, "--jinja"]
    assert server.server_port != 8080  # a free port of its own
    server.stop()
    assert server.stopped


def test_refused_at_start():
    ServerPreset.tinyllama2().start()


def test_another_preset():
    ServerPreset.bert_bge_small().start()
    raise AssertionError("ran")


def test_the_test_picks_its_own_model():
    server = ServerPreset.tinyllama2()
    server.model_hf_repo = "bartowski/Phi-3.5-mini-instruct-GGUF:Q4_K_M"
    server.start()
    raise AssertionError("ran")


def test_router():
    ServerPreset.router().start()
    raise AssertionError("ran")


def test_download():
    download_file("https://huggingface.co/ggml-org/stories15M_MOE/resolve/main/lora.gguf")
    raise AssertionError("ran")


def test_internet():
    requests.get("https://huggingface.co/ggml-org/tinygemma3-GGUF/resolve/main/test/91_cat.png")
    raise AssertionError("ran")


def test_local_requests_go_through():
    assert requests.get("http://127.0.0.1:8080/health") == "fetched http://127.0.0.1:8080/health"


def test_tmp_dir_exists():
    assert os.path.isdir(TMP_DIR)


@pytest.fixture
def container_engine():
    raise AssertionError("probes docker, which pulls an image")


def test_in_a_container(container_engine):
    raise AssertionError("ran")


@pytest.mark.skip(reason="This test fails on linux")
def test_suite_skip():
    pass
"""

# Refuses --no-jinja as argparse would; anything else "serves".
SERVER = f"""#!{sys.executable}
import sys
if "--no-jinja" in sys.argv:
    print("loading...")
    print("gemma: error: unrecognized arguments: --no-jinja", file=sys.stderr)
    sys.exit(2)
"""


def run_suite(tmp_path: Path, side: str) -> dict[str, Outcome]:
    suite = tmp_path / "suite"
    (suite / "unit").mkdir(parents=True)
    (suite / "utils.py").write_text(UTILS)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "unit" / "test_fake.py").write_text(textwrap.dedent(TESTS))
    server = tmp_path / "server"
    server.write_text(SERVER)
    server.chmod(0o755)
    junit = tmp_path / f"{side}.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(suite)]),
        "LLAMA_SERVER_BIN_PATH": str(server),
        "COMPAT_SIDE": side,
        "COMPAT_LOG_DIR": str(tmp_path / "logs"),
    }
    env.pop("COMPAT_MODEL", None)
    if side == PEER:
        env["COMPAT_MODEL"] = str(tmp_path / "gemma.gguf")
    command = [sys.executable, "-m", "pytest", "unit", "-p", "compat.plugin", "-p", "no:cacheprovider",
               "-q", f"--junitxml={junit}"]  # fmt: skip
    result = subprocess.run(command, cwd=suite, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stdout + result.stderr  # test_refused_at_start fails
    return {test_id.split("::")[1]: outcome for test_id, outcome in read_junit(junit).items()}


@pytest.mark.parametrize("side", [PEER, OURS])
def test_both_sides_skip_the_same_tests_with_their_reason(tmp_path: Path, side: str) -> None:
    outcomes = run_suite(tmp_path, side)
    skipped = {name: o.message for name, o in outcomes.items() if o.status == "skipped"}
    hub = "from Hugging Face, not available here"
    assert skipped == {
        "test_another_preset": f"{NOT_APPLICABLE}needs model ggml-org/models/bert-bge-small/"
        f"ggml-model-f16.gguf {hub}",
        "test_the_test_picks_its_own_model": f"{NOT_APPLICABLE}needs model "
        f"bartowski/Phi-3.5-mini-instruct-GGUF:Q4_K_M {hub}",
        "test_router": f"{NOT_APPLICABLE}runs llama-server in router mode (no model of its own; it "
        "loads models by name from Hugging Face or a preset file), which a one-model file does not have",
        "test_download": f"{NOT_APPLICABLE}needs file "
        "https://huggingface.co/ggml-org/stories15M_MOE/resolve/main/lora.gguf, not available here",
        "test_internet": f"{NOT_APPLICABLE}needs the internet: fetches "
        "https://huggingface.co/ggml-org/tinygemma3-GGUF/resolve/main/test/91_cat.png",
        "test_in_a_container": f"{NOT_APPLICABLE}needs docker or podman with the busybox image "
        "(pulled from Docker Hub)",
        "test_suite_skip": "This test fails on linux",
    }
    # The model swap: llama-server gets the GGUF, our file no model flag; no download.
    for name in ("test_serves_the_swapped_model", "test_local_requests_go_through", "test_tmp_dir_exists"):
        assert outcomes[name].status == "passed", outcomes[name]
    # A server that dies says why: its last line joins the suite's message.
    refused = outcomes["test_refused_at_start"]
    assert (refused.status, refused.message) == (
        "failed",
        "RuntimeError: Server process died with return code 2: "
        "gemma: error: unrecognized arguments: --no-jinja",
    )
    logs = sorted(path.name for path in (tmp_path / "logs").iterdir())
    assert logs == [
        "unit_test_fake.py_test_refused_at_start.2.log",
        "unit_test_fake.py_test_serves_the_swapped_model.1.log",
    ]


def test_an_unknown_side_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("")
    (tmp_path / "utils.py").write_text("")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "COMPAT_SIDE": "other"}
    command = [sys.executable, "-m", "pytest", "-p", "compat.plugin", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 4
    assert "COMPAT_SIDE must be llama-server or llamapack, not 'other'" in result.stderr


HANGING_UTILS = """
import os
import subprocess
import sys
import types

TMP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tmp")
requests = types.SimpleNamespace(sessions=types.SimpleNamespace(Session=type("Session", (), {})))
requests.sessions.Session.request = lambda self, method, url, *args, **kwargs: None
server_instances = set()


class ServerProcess:
    model_hf_repo = model_file = model_url = model_draft = mmproj_url = lora_files = None
    models_dir = models_preset = log_path = process = None
    server_port = 8080

    def start(self, timeout_seconds=60):
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        server_instances.add(self)
        with open(os.environ["SERVER_PID_FILE"], "w") as file:
            file.write(str(self.process.pid))

    def stop(self):
        server_instances.discard(self)
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


class ServerPreset:
    load_all = tinyllama2 = router = staticmethod(ServerProcess)


def download_file(url, output_file_path=None):
    raise AssertionError("download_file downloads")
"""

HANGING_TEST = """
import time
from utils import *


def test_hangs():
    ServerPreset.tinyllama2().start()
    time.sleep(120)
"""


def test_a_run_stopped_from_outside_stops_its_servers(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "utils.py").write_text(HANGING_UTILS)
    (suite / "conftest.py").write_text("from utils import *\n")
    (suite / "test_hang.py").write_text(HANGING_TEST)
    pid_file = tmp_path / "server.pid"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(suite)]),
        "COMPAT_SIDE": OURS,
        "COMPAT_LOG_DIR": str(tmp_path / "logs"),
        "SERVER_PID_FILE": str(pid_file),
    }
    command = [sys.executable, "-m", "pytest", "-p", "compat.plugin", "-p", "no:cacheprovider", "-q"]
    run = subprocess.Popen(command, cwd=suite, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()[0]
            time.sleep(0.05)
        server_pid = int(pid_file.read_text())
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 2  # interrupted
    finally:
        run.kill()
        run.communicate()
    assert not Path(f"/proc/{server_pid}").exists(), "the server outlived the run"
