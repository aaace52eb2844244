"""When to renew an SVID and how long to wait between failed attempts.

Pure functions of their arguments: the caller passes times and a random source, so tests need
no clock.
"""

from __future__ import annotations

import random
from datetime import datetime

# Renewal starts at this fraction of the lifetime, leaving the other half for retries while the
# current certificate is still valid.
RENEWAL_FRACTION = 0.5
DEFAULT_JITTER = 0.1


def next_renewal(
    not_before: datetime,
    not_after: datetime,
    *,
    jitter: float = DEFAULT_JITTER,
    rng: random.Random,
) -> datetime:
    """Return when to renew a certificate valid from `not_before` to `not_after`.

    The time is `not_before` plus half the lifetime, moved by a uniform random amount of at most
    `jitter` times that half, so that sidecars started together spread their renewals.
    `jitter` must be in [0, 1): at 1 a renewal could be due at `not_before` itself.
    """
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter {jitter!r} is outside [0, 1)")
    if not_after <= not_before:
        raise ValueError(f"not_after {not_after.isoformat()} is not after not_before {not_before.isoformat()}")
    half = (not_after - not_before) * RENEWAL_FRACTION
    offset = half * rng.uniform(-jitter, jitter)
    return not_before + half + offset


def renewal_delay(renew_at: datetime, now: datetime) -> float:
    """Return the seconds from `now` until `renew_at`, or 0 when it has passed."""
    return max(0.0, (renew_at - now).total_seconds())


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Return the wait in seconds before retry number `attempt` (0 for the first retry).

    Exponential growth from `base`, capped at `cap`, with "equal jitter": a uniform pick between
    half the capped value and the capped value, so that retries from many pods do not line up
    and the wait never drops to zero.
    """
    if attempt < 0:
        raise ValueError(f"attempt {attempt} is negative")
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return rng.uniform(ceiling / 2, ceiling)
