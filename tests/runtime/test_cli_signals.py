"""runtime/cli.py: the first SIGTERM or SIGINT shuts the server down gracefully, a
second one during that shutdown ends the process at once with one line."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# A process that takes one signal, starts "shutting down" (as run_app's clean-up
# runs the loop again), and gets the second signal meanwhile.
SCRIPT = """
import asyncio, os, signal, sys
from aiohttp.web_runner import GracefulExit
from llamapack.runtime.cli import _stop_on_signals

number = int(sys.argv[1])
loop = asyncio.new_event_loop()
_stop_on_signals(loop)
loop.call_soon(os.kill, os.getpid(), number)
try:
    loop.run_forever()
except GracefulExit:
    print("graceful shutdown begins", flush=True)
loop.call_soon(os.kill, os.getpid(), number)
loop.run_until_complete(asyncio.sleep(5))
print("shutdown finished without the second signal", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_shutdown_stops_at_once_with_one_line(sig: signal.Signals) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(int(sig))], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "graceful shutdown begins\n"
    assert result.returncode == 128 + sig
    assert result.stderr == f"llamapack-runtime: stopped at once ({sig.name} during shutdown)\n"
