"""Helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0,
                     what: str = "condition") -> None:
    """Poll ``check`` (plain or async) until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def stop_tasks(*tasks: asyncio.Task[object]) -> None:
    """Cancel background tasks and wait for them; re-raise the first exception other than cancellation,
    so a crashed discovery, daemon or watcher task fails the test instead of vanishing."""
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise AssertionError(f"background task {task.get_name()} crashed: {result!r}") from result
