"""The Redis store's worker upkeep: one lease per worker (not per stream), renewed every second,
with this worker's view of which workers are live; and the ends this worker could only write
locally while Redis was away, written to Redis once it is back.

A lease is a member of the `workers` sorted set scored by its expiry in milliseconds of Redis's
own clock (TIME in the script), so no two hosts' clocks are ever compared.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..errors import StoreUnavailableError
from ..events import STORE_UNAVAILABLE
from ..green import spawn
from .base import StreamClosedError, UnknownStreamError
from .redis_mirror import terminal

if TYPE_CHECKING:
    from .redis import RedisStore

log = logging.getLogger(__name__)

RENEW_EVERY = 1.0


class LeaseLoop:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.live: frozenset[str] = frozenset((store.worker_id,))
        self.renewed = 0.0  # monotonic time of the last renewal that succeeded
        # Streams of this worker ended only here (Redis was away): their end is still due.
        # stream -> (seq, events): the end this worker's readers got.
        self.orphans: dict[str, tuple[int, list[bytes]]] = {}
        self._told_policy = False
        self.policy_checked = threading.Event()  # Redis's eviction policy has been looked at
        self.runner = spawn(self._run, "redis-lease")

    def fresh(self) -> bool:
        """Renewed recently enough that this worker's streams cannot be taken for lost."""
        return time.monotonic() - self.renewed < self.store.lease_seconds / 2

    def renew(self) -> None:
        """Renew this worker's lease and learn which workers are live."""
        store = self.store
        lease_ms = int(store.lease_seconds * 1000)
        live = store.call(lambda _: store.script("LEASE", [store.keys.workers],
                                                 [store.worker_id, lease_ms, lease_ms * 12]))
        self.live = frozenset(w.decode() for w in live)
        self.renewed = time.monotonic()
        if not self._told_policy:
            self._told_policy = True
            policy = store.eviction_policy()
            if policy is not None and policy.startswith("allkeys-"):
                log.warning("Redis maxmemory-policy is %s: it may evict streams that are still "
                            "running or resumable; use noeviction or a volatile-* policy", policy)
            self.policy_checked.set()

    def _run(self) -> None:
        store = self.store
        failing = False
        while not store.closed.is_set():
            try:
                self.renew()
                if failing:
                    log.warning("Redis is reachable again; this worker's lease is renewed")
                failing = False
                if self.orphans:
                    self._end_orphans()
                if store.counters.unreleased:
                    store.counters.release_unreleased()
            except StoreUnavailableError:
                if not failing:
                    log.warning("could not renew this worker's lease: Redis is unreachable")
                failing = True
            except Exception:
                log.exception("could not renew this worker's lease")
            store.closed.wait(RENEW_EVERY)

    def _end_orphans(self) -> None:
        """Write the end of each stream this worker ended only locally: its producer is gone,
        yet its worker is live, so nobody else would end it. The same bytes its readers here
        got when Redis holds what they held; else `store_unavailable` after what it holds."""
        store = self.store
        for stream_id, (seq, events) in list(self.orphans.items()):
            try:
                # Redis's own count: this worker's mirror holds the local end.
                n, ended = store.redis_status(stream_id)
                if not ended:
                    if n != seq:
                        events = terminal(store.meta(stream_id), n, STORE_UNAVAILABLE)
                    store.append(stream_id, n, events, end=True)
            except (StreamClosedError, UnknownStreamError):
                pass  # ended or expired meanwhile: nothing is due
            self.orphans.pop(stream_id, None)
