"""Coalescing of bursts of mesh changes into one configuration push.

A burst of changes (a rollout touching many pods) would otherwise make the control plane
translate and push once per change. The debouncer waits until no change has arrived for the
quiet period, but never longer than the maximum delay after the first change of the burst.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable


@dataclass(frozen=True, slots=True)
class DebounceSettings:
    """Quiet period and maximum delay, in seconds."""

    quiet: float = 0.1
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.quiet < 0 or self.max_delay < self.quiet:
            raise ValueError(
                f"debounce needs 0 <= quiet <= max_delay, got quiet={self.quiet} "
                f"max_delay={self.max_delay}"
            )


def fire_at(first_change: float, last_change: float, settings: DebounceSettings) -> float:
    """Return when a burst that started at `first_change` and last changed at `last_change` fires."""
    return min(last_change + settings.quiet, first_change + settings.max_delay)


class Debouncer:
    """Calls `fire(first_change)` once per burst of `trigger()` calls.

    `clock` and `sleep` are injected so tests can drive time by hand. `fire` runs in the event
    loop task that the first trigger of a burst starts, so it must return quickly. The snapshot
    cache only records the due state there and leaves translation to its worker thread.
    """

    def __init__(
        self,
        fire: Callable[[float], None],
        *,
        settings: DebounceSettings = DebounceSettings(),
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fire = fire
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._first: float | None = None
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def trigger(self) -> None:
        """Record a change; must be called from within the running event loop."""
        now = self._clock()
        if self._first is None:
            self._first = now
        self._last = now
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            assert self._first is not None
            remaining = fire_at(self._first, self._last, self._settings) - self._clock()
            if remaining <= 0:
                break
            await self._sleep(remaining)
        first, self._first = self._first, None
        self._fire(first)

    async def close(self) -> None:
        """Cancel a pending burst without firing it."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._first = None
