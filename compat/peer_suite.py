"""llama.cpp's server test suite against llama-server and against a built file, in one run.

    .venv/bin/python -m compat.peer_suite                      # everything: compat/RESULTS.md
    .venv/bin/python -m compat.peer_suite --only test_tokenize.py
    .venv/bin/python -m compat.peer_suite --only 'chat and stream' --ours-only
    .venv/bin/python -m compat.peer_suite --report     # RESULTS.md from the last runs

Both sides serve the same GGUF (Gemma 3 270M Q4_K_M) and run the same llama.cpp:
  * the suite (`tools/server/tests`) and `llama-server` come from the llama-cpp-python
    sdist our engine is built from, unpacked and built once by bench.run.llama_server()
    under bench/work/ (git-ignored); the suite runs in place there, since its tests read
    files of the llama.cpp tree by relative path;
  * our side is a file built by `llamapack build` under build/compat/, serving the
    model inside it.
The suite runs in its own venv (build/compat-venv, from its requirements.txt: its pins
differ from ours) under compat.plugin, one side after the other, each server on a free
port. Each side's junit XML, output and server logs stay under build/compat/.

--only or --ours-only write build/compat/RESULTS.md (--ours-only compares with the
last llama-server run); a full run of both sides, or --report, writes compat/RESULTS.md,
which gives when each side's run started.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from compat.junit import read_junit, read_suite_run
from compat.report import RunInfo, render
from compat.verdicts import OURS, PEER, compare, summarize

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "compat"  # default; --work picks another
VENV = ROOT / "build" / "compat-venv"
RESULTS = ROOT / "compat" / "RESULTS.md"
# Beyond the suite's own requirements: a hung test must not stall the run.
EXTRA_REQUIREMENTS = ["pytest-timeout"]
# llama.cpp's tests.sh leaves its slow tests out unless SLOW_TESTS=1; so do we.
DEFAULT_MARKERS = "not slow"
_PROGRESS = re.compile(r"\[\s*\d+%\]\s*$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Side:
    name: str
    binary: Path  # what the suite starts as its server
    model: Path | None  # the GGUF to pass it; None serves the model inside the file


def suite_of(server_binary: Path) -> Path:
    """The test suite of the llama.cpp tree `server_binary` was built in (build/bin/)."""
    tree = server_binary.resolve().parents[2]
    suite = tree / "tools" / "server" / "tests"
    if not (suite / "unit").is_dir():
        raise SystemExit(f"no server test suite at {suite}")
    return suite


def suite_python(requirements: Path) -> Path:
    """The suite's own venv, (re)made when its requirements change."""
    wanted = requirements.read_text() + "\n".join(EXTRA_REQUIREMENTS)
    marker = VENV / f".installed-{hashlib.sha256(wanted.encode()).hexdigest()[:12]}"
    python = VENV / "bin" / "python"
    if marker.exists():
        return python
    log(f"installing the suite's requirements into {VENV.relative_to(ROOT)}...")
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements), *EXTRA_REQUIREMENTS], check=True)
    marker.touch()
    return python


def build_file(gguf: Path, work: Path) -> Path:
    """Our side: a file built from the working tree's runtime, the GGUF inside it."""
    output = work / "gemma"
    llamapack = Path(sys.executable).parent / "llamapack"
    log(f"building {output} with llamapack build...")
    subprocess.run([str(llamapack), "build", str(gguf), "-o", str(output), "-q"], check=True)
    return output


def selection(only: str | None, markers: str) -> list[str]:
    """pytest arguments choosing the tests: a file or node id as a path, anything else for -k."""
    chosen = ["-m", markers] if markers else []
    if only is None:
        return [*chosen, "unit"]
    if only.endswith(".py") or "::" in only or "/" in only:
        return [*chosen, only if only.startswith("unit/") else f"unit/{only}"]
    return [*chosen, "-k", only, "unit"]


def run_side(side: Side, python: Path, suite: Path, chosen: list[str], timeout_s: int, work: Path) -> None:
    """One pass of the suite against `side`; its junit XML, full output and server logs
    go under `work`."""
    junit = work / f"{side.name}.xml"
    output = work / f"{side.name}.log"
    logs = work / "logs" / side.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(suite)]),
        "LLAMA_SERVER_BIN_PATH": str(side.binary),
        "COMPAT_SIDE": side.name,
        "COMPAT_LOG_DIR": str(logs),
        "PYTHONUNBUFFERED": "1",  # progress as it happens, through the pipe
        # The file opens the chat page in a browser unless told not to: make that a no-op.
        "BROWSER": "true",
    }
    env.pop("COMPAT_MODEL", None)
    if side.model is not None:
        env["COMPAT_MODEL"] = str(side.model)
    command = [
        str(python), "-m", "pytest", *chosen, "-p", "compat.plugin", "-p", "no:cacheprovider",
        "-q", "--tb=short", f"--timeout={timeout_s}", f"--junitxml={junit}",
    ]  # fmt: skip
    log(f"{side.name}: running the suite (output in {output})...")
    # Line-buffered: what a killed run printed is still there to read.
    with output.open("w", buffering=1) as sink:
        process = subprocess.Popen(
            command, cwd=suite, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                if _PROGRESS.search(line):
                    log(f"  {side.name}: {line.strip()}")
        finally:
            # Interrupted here, the suite gets SIGTERM too: compat.plugin then stops its servers.
            if process.poll() is None:
                process.terminate()
            status = process.wait()
    # 0: all passed, 1: some failed; anything else means the suite itself did not run.
    if status not in (0, 1):
        raise SystemExit(f"{side.name}: pytest exited with status {status}; see {output}")


def first_line(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return next((line.strip() for line in lines if line.strip()), "?")


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", metavar="PATTERN",
                        help="a test file or node id under unit/, or a -k expression")  # fmt: skip
    parser.add_argument("--ours-only", action="store_true",
                        help=f"run {OURS} only; compare with the last {PEER} run")  # fmt: skip
    parser.add_argument("--report", action="store_true",
                        help="run nothing: write RESULTS.md from the last run of each side "
                        "(give the options those runs had)")  # fmt: skip
    parser.add_argument("--slow", action="store_true", help="also the suite's slow tests")
    parser.add_argument("--timeout", type=int, default=300, metavar="S", help="per test (default: 300)")
    parser.add_argument("--work", type=Path, default=WORK, metavar="DIR",
                        help="for the file, junit XML and logs, so that two runs cannot clash "
                        "(default: build/compat)")  # fmt: skip
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the running suite is stopped cleanly
    from bench.run import LLAMA_CPP_PYTHON, gemma_gguf, llama_server, machine

    work: Path = options.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    gguf = gemma_gguf()
    server_binary = llama_server()
    suite = suite_of(server_binary)
    version = LLAMA_CPP_PYTHON.split("==")[1]
    if f"llama_cpp_python-{version}" not in str(server_binary.resolve()):
        raise SystemExit(f"{server_binary} is not built from llama-cpp-python {version}: remove bench/work")
    markers = "" if options.slow else DEFAULT_MARKERS
    sides = [Side(PEER, server_binary, gguf), Side(OURS, work / "gemma", None)]
    reused = sides if options.report else sides[:1] if options.ours_only else []
    missing = [side.name for side in reused if not (work / f"{side.name}.xml").exists()]
    if missing:
        raise SystemExit(f"no {' or '.join(missing)} run to reuse: run without options once")
    if not options.report:
        python = suite_python(suite / "requirements.txt")
        build_file(gguf, work)
        chosen = selection(options.only, markers)
        for side in sides[1:] if options.ours_only else sides:
            run_side(side, python, suite, chosen, options.timeout, work)

    peer = read_junit(work / f"{PEER}.xml")
    ours = read_junit(work / f"{OURS}.xml")
    if options.ours_only or options.only:  # the last peer run may have covered more tests
        peer = {test_id: outcome for test_id, outcome in peer.items() if test_id in ours}
    rows = compare(peer, ours)
    full = options.only is None and not options.ours_only
    target = RESULTS if full else work / "RESULTS.md"
    arguments = " ".join(sys.argv[1:] if argv is None else argv)
    info = RunInfo(
        date=time.strftime("%Y-%m-%d"),
        command=f"python -m compat.peer_suite {arguments}".strip() if arguments else "make compat",
        llama_cpp=(
            f"the llama.cpp vendored in llama-cpp-python {version} (`llama-server --version`: "
            f"{first_line([str(server_binary), '--version'])}; the file's `--version`: "
            f"{first_line([str(sides[1].binary), '--version'])})"
        ),
        model=f"`{gguf.name}`",
        selection=(
            f"`tools/server/tests/unit` of llama-cpp-python {version}'s sdist, "
            + (f"`-m '{markers}'` as its tests.sh runs it" if markers else "every test")
            + (f", `--only {options.only}`" if options.only else "")
        ),
        timeout_s=options.timeout,
        machine=machine(),
        runs={side.name: read_suite_run(work / f"{side.name}.xml") for side in sides},
    )
    target.write_text(render(rows, info))
    summary = summarize(rows)
    log(
        f"{PEER} passed {summary.peer_passed}; {OURS} passed {summary.ours_passed_of_peer} of those "
        f"({summary.share:.1%}); not applicable {summary.not_applicable}; written to {target}"
    )


if __name__ == "__main__":
    main()
