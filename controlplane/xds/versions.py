"""Version strings and nonces that never repeat, also across control-plane restarts.

Each process picks an epoch from the wall clock and random bits when it starts; every version and
nonce it issues is the epoch plus a counter. Two processes, or one process restarted, therefore
never issue the same string, so a reconnecting Envoy cannot mistake new content for the version it
already holds.
"""

from __future__ import annotations

import itertools


def make_epoch(wall_time: float, random_bits: int) -> str:
    """Build an epoch from seconds since 1970 and 32 random bits, as hex: `<seconds>.<random>`."""
    if not 0 <= random_bits < 2**32:
        raise ValueError(f"random_bits must be in [0, 2**32), got {random_bits}")
    return f"{int(wall_time):x}.{random_bits:08x}"


class IdSource:
    """Issues response versions and nonces under one epoch.

    A single counter backs both, so no version equals another version and no nonce equals
    another nonce, across every stream that shares this source.
    """

    def __init__(self, epoch: str) -> None:
        if not epoch:
            raise ValueError("epoch must be a non-empty string")
        self.epoch = epoch
        self._counter = itertools.count(1)

    def next_version(self) -> str:
        return f"{self.epoch}.v{next(self._counter)}"

    def next_nonce(self) -> str:
        return f"{self.epoch}.n{next(self._counter)}"
