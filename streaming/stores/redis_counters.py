"""The Redis store's counters: presence and limits, counted across every worker.

A counter is a hash of counts per worker. Only the workers whose lease is live count (a worker
that died takes its counts with it once its lease lapses); the Lua scripts sum the fields of the
workers this worker knows to be live, and drop the others only once this worker has just
renewed its view of the leases (a worker leases before it counts, so a newer one is never
dropped).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import StoreUnavailableError
from .base import Counter

if TYPE_CHECKING:
    from .redis import RedisStore


class Counters:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        # Releases Redis did not take (it was away): made once it is back, since a count
        # that sticks would hold a limit or keep a stream's grace from ever starting.
        self.unreleased: deque[Counter] = deque()

    def acquire(self, counter: Counter, limit: int) -> bool:
        store = self.store
        key = self._key(counter)
        if not store.lease.fresh():
            store.lease.renew()  # counted only under a lease, so others never prune it

        def run(prune: bool) -> int:
            return int(store.call(lambda _: store.script(
                "ACQUIRE", [key], [limit, store.worker_id, store.running_ttl_ms, int(prune),
                                   *self._live()])))

        result = run(False)
        if result == -1:  # a worker this one has not seen yet, or a dead one
            store.lease.renew()
            result = run(True)
        return result == 1

    def release(self, counter: Counter) -> None:
        store = self.store
        key = self._key(counter)
        keys = [key]
        if counter[0] == "followers":
            keys.append(store.keys.stream(counter[1])[0])

        # Counts are at least once: a retry after a reply was lost counts again (rare, and
        # bounded by the key's TTL); a retry that never counted is the usual case.
        def run(decrement: bool, prune: bool) -> list[Any]:
            return list(store.call(lambda _: store.script(
                "RELEASE", keys, [store.worker_id, store.keys.control(""), counter[1],
                                  int(decrement), int(prune), *self._live()])))

        try:
            result = run(True, False)
        except StoreUnavailableError:
            self.unreleased.append(counter)
            return
        if result[0] == -1:
            store.lease.renew()
            result = run(False, True)
        if len(result) > 1:  # the last follower left a running stream: tell its producer
            producer = store.producers.get(counter[1])
            if producer is not None:
                producer.presence_changed()

    def release_unreleased(self) -> None:
        for _ in range(len(self.unreleased)):  # what fails again waits for the next turn
            self.release(self.unreleased.popleft())

    def count(self, counter: Counter) -> int:
        store = self.store
        key = self._key(counter)
        reply = store.call(lambda _: store.client.hgetall(key))
        counts = {w.decode(): int(n) for w, n in reply.items()}
        if not counts.keys() <= self._live():
            store.lease.renew()
        live = self._live()
        return sum(n for w, n in counts.items() if w in live and n > 0)


    def _live(self) -> frozenset[str]:
        return self.store.lease.live | {self.store.worker_id}

    def _key(self, counter: Counter) -> str:
        kind, name = counter
        if kind == "followers":
            return self.store.keys.stream(name)[2]  # in the stream's slot, beside its meta
        return self.store.keys.counter(kind, name)
