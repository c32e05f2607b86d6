"""--sleep-idle-seconds: free the model's memory when nobody uses it, and load it
again when a request needs it (llama-server's flag).

Requests that need the model are the POSTs: each wakes the server first and counts
as in flight until its answer (a stream too) is sent, so the model is never freed
under a request. Reading routes (/health, /props, /models, /metrics) neither need
nor wake it; /metrics keeps its counters across a sleep (State.stats).
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from llamapack.runtime.server.common import CONFIG, STATE


class Sleeper:
    def __init__(self, app: web.Application, idle_seconds: float):
        self.app = app
        self.idle_seconds = idle_seconds
        self.in_flight = 0
        self.last_used = time.monotonic()
        self._lock = asyncio.Lock()  # one sleep or wake at a time
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        period = min(1.0, self.idle_seconds / 4)
        while True:
            await asyncio.sleep(period)
            if self._idle():
                await self._sleep()

    def _idle(self) -> bool:
        state = self.app[STATE]
        backend = state.backend
        return (
            backend is not None
            and not state.sleeping
            and self.in_flight == 0
            and backend.engine.busy_slots == 0
            and backend.engine.queue_length == 0
            and time.monotonic() - self.last_used >= self.idle_seconds
        )

    async def _sleep(self) -> None:
        async with self._lock:
            state = self.app[STATE]
            if not self._idle() or state.backend is None:
                return
            backend, state.backend = state.backend, None
            state.stats = backend.engine.stats
            state.sleeping = True
            await asyncio.to_thread(backend.close)
            print(f"{_prog()}: sleeping: the model is unloaded until the next request", file=sys.stderr)

    async def wake(self) -> None:
        state = self.app[STATE]
        if not state.sleeping:
            return
        async with self._lock:
            if not state.sleeping:
                return
            backend = await asyncio.to_thread(self.app[CONFIG].load_backend)
            if state.stats is not None:
                backend.engine.stats = state.stats  # counters go on across the sleep
            state.backend = backend
            state.sleeping = False
            self.last_used = time.monotonic()


SLEEPER = web.AppKey("sleeper", Sleeper)


def _prog() -> str:
    return sys.argv[0].rsplit("/", 1)[-1] or "llamapack"


@web.middleware
async def wake_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    sleeper = request.app.get(SLEEPER)
    if sleeper is None or request.method != "POST":
        return await handler(request)
    await sleeper.wake()
    sleeper.in_flight += 1
    try:
        return await handler(request)
    finally:
        sleeper.in_flight -= 1
        sleeper.last_used = time.monotonic()


def add_sleeper(app: web.Application, idle_seconds: float) -> None:
    sleeper = Sleeper(app, idle_seconds)
    app[SLEEPER] = sleeper

    async def start(app: web.Application) -> None:
        sleeper.start()

    async def stop(app: web.Application) -> None:
        await sleeper.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
