"""Several generations for one HTTP request (a batch of prompts, `n` choices): started
together, and their events merged as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from llamapack.runtime.backend import Backend
from llamapack.runtime.engine.events import Event
from llamapack.runtime.server.common import StartedEvents, started
from llamapack.runtime.server.requests import Generation


async def start_all(
    backend: Backend, prompts: list[list[int]], generation: Generation
) -> list[StartedEvents]:
    """One generation per prompt, each started: a refusal (a prompt too long, a bad
    grammar) raises here, before anything is sent, and stops the others."""
    streams = [backend.generate(prompt, generation) for prompt in prompts]
    try:
        return list(await asyncio.gather(*(started(stream) for stream in streams)))
    except BaseException:
        await close_all(streams)
        raise


async def close_all(streams: Sequence[AsyncGenerator[Event, None] | StartedEvents]) -> None:
    """Cancels whatever of them still runs."""
    for stream in streams:
        await stream.aclose()


async def merge(streams: Sequence[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    """Events of several streams as they come, each with its stream's index."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Event]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
