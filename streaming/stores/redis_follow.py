"""The Redis store's follow loop: one per worker, keeping the mirrors of streams produced
elsewhere current.

The loop owns one pub/sub connection. It subscribes to the notification channel of each stream
this worker's clients follow, and to this worker's control channel (cancel, presence); on a
notification it range-reads every changed stream in one pipelined round trip, and it polls
quiet streams about once a second in case a notification was lost. It also ends, exactly once
through the store's compare-and-append, the streams whose producer's worker lost its lease, and
ends the mirrors here with `store_unavailable` when Redis stays away.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from ..events import PRODUCER_LOST, STORE_UNAVAILABLE
from ..green import spawn
from .base import StreamClosedError, UnknownStreamError
from .redis_mirror import Mirror, events_of, terminal
from .redis_scripts import meta_from

if TYPE_CHECKING:
    from .redis import RedisStore

log = logging.getLogger(__name__)

LISTEN = 0.1  # how long one turn of the loop waits for a message
POLL = 1.0  # how often a quiet stream is read anyway, and lost producers looked for
ECHO = 5.0  # how often the loop checks that its pub/sub connection still delivers
CONFIRM = 0.9  # a producer's worker is lost when still without a lease at the next look


class FollowLoop:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        # Streams to read from Redis on the next turn; appended from any thread.
        self._due: deque[str] = deque()
        self._channels: dict[bytes, str] = {}  # subscribed notification channel -> stream
        self._control = store.keys.control(store.worker_id).encode()
        self._echo_sent: float | None = None  # an echo published and not heard back yet
        self._echo_at = 0.0
        self._missing: dict[str, float] = {}  # worker without a lease -> since when
        self.runner = spawn(self._run, "redis-follow")

    def open(self, stream_id: str, cursor: int) -> Mirror | tuple[list[bytes], bool]:
        """Read a stream this worker holds no mirror of: an ended one at once (the answer), a
        running one into a new mirror that this loop keeps current."""
        store = self.store
        meta_key, log_key, _ = store.keys.stream(stream_id)

        def build(pipe: Any) -> None:
            pipe.hgetall(meta_key)  # before the entries: if it had ended, every one comes
            pipe.xrange(log_key, f"{cursor}-0", "+")

        fields, entries = store.pipeline(build)
        meta = meta_from(stream_id, fields)
        if meta is None:
            raise UnknownStreamError(stream_id)
        n = int(fields[b"n"])
        if fields.get(b"state") == b"ended" and cursor >= n:
            return [], True
        rest = events_of(entries, cursor)
        if fields.get(b"state") == b"ended" and cursor + len(rest) == n:
            return rest, True  # the usual resume of an ended stream: only what it lacks
        # Running: the mirror holds the whole log, for every reader here.
        head = [] if cursor == 0 else events_of(store.pipeline(
            lambda pipe: pipe.xrange(log_key, "-", f"{cursor - 1}-1"))[0], 0)
        mirror = Mirror(meta, local=False)
        mirror.log.events.extend(head if len(head) < cursor else [*head, *rest])
        with store.lock:
            mirror = store.mirrors.setdefault(stream_id, mirror)
        self._due.append(stream_id)  # subscribe, and read what came meanwhile
        return mirror

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        store = self.store
        pubsub: Any = None
        last_poll = 0.0
        failing_since: float | None = None
        while not store.closed.is_set():
            try:
                if pubsub is None:
                    pubsub = store.pubsub()
                    pubsub.subscribe(self._control)
                    self._channels = {}
                    self._echo_sent = None
                    self._recheck_cancels()
                self._subscribe(pubsub)
                self._listen(pubsub)
                now = time.monotonic()
                if now - last_poll >= POLL:
                    last_poll = now
                    self._drop_idle(now)
                    self._due.extend(sid for sid, m in list(store.mirrors.items())
                                     if m.followed and now - m.checked >= POLL)
                    self._end_lost()
                    self._echo(now)
                if self._due:
                    due = set()
                    while self._due:
                        due.add(self._due.popleft())
                    self.refresh(due)
                failing_since = None
            except Exception:
                if pubsub is not None:
                    _close_quietly(pubsub)
                    pubsub = None
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.warning("following streams in Redis failed; retrying", exc_info=True)
                elif now - failing_since > store.retry_for:
                    self._end_unavailable()
                store.closed.wait(0.25)
        if pubsub is not None:
            _close_quietly(pubsub)

    def _echo(self, now: float) -> None:
        """A connection can die without a word (a half-open socket, a failover): publish to
        this worker's own channel now and then, and start over if it does not come back."""
        if self._echo_sent is not None and now - self._echo_sent > ECHO:
            raise ConnectionError("the pub/sub connection stopped delivering")
        if self._echo_sent is None and now - self._echo_at >= ECHO:
            self._echo_sent = self._echo_at = now
            self.store.call(lambda _: self.store.client.publish(self._control, "echo"))

    def _subscribe(self, pubsub: Any) -> None:
        store = self.store
        want = {store.keys.notify(sid).encode(): sid
                for sid, m in list(store.mirrors.items()) if m.followed}
        new = [c for c in want if c not in self._channels]
        old = [c for c in self._channels if c not in want]
        if new:
            pubsub.subscribe(*new)
            # What was appended before the subscription took effect is read once now.
            self._due.extend(want[c] for c in new)
        if old:
            pubsub.unsubscribe(*old)
        self._channels = want

    def _listen(self, pubsub: Any) -> None:
        message = pubsub.get_message(timeout=LISTEN)
        for _ in range(10_000):
            if message is None:
                return
            if message.get("type") == "message":
                self._on_message(message["channel"], message["data"])
            message = pubsub.get_message(timeout=0.0)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        store = self.store
        if channel == self._control:
            what, _, stream_id = data.decode().partition(" ")
            if what == "echo":
                self._echo_sent = None
            producer = store.producers.get(stream_id)
            if producer is not None:
                if what == "cancel":
                    producer.cancel()
                elif what == "presence":
                    producer.presence_changed()
            return
        followed = self._channels.get(channel)
        mirror = store.mirrors.get(followed) if followed is not None else None
        if followed is None or mirror is None:
            return
        n, _, end = data.decode().partition(" ")
        if not n.isdigit() or len(mirror.log.events) < int(n) or (end and not mirror.log.ended):
            self._due.append(followed)

    # -- reading, in one round trip -----------------------------------------------------

    def refresh(self, due: set[str]) -> None:
        """Bring the mirrors of `due` up to date from Redis."""
        store = self.store
        batch = [(sid, m, len(m.log.events)) for sid in due
                 if (m := store.mirrors.get(sid)) is not None and m.followed]
        if not batch:
            return

        def build(pipe: Any) -> None:
            for sid, _, have in batch:
                meta_key, log_key, _ = store.keys.stream(sid)
                pipe.hmget(meta_key, "state", "n")
                pipe.xrange(log_key, f"{have}-0", "+")

        replies = store.pipeline(build)
        now = time.monotonic()
        for i, (sid, mirror, have) in enumerate(batch):
            (state, n), entries = replies[2 * i], replies[2 * i + 1]
            mirror.checked = now
            if state is None:
                # A running stream cannot expire: Redis lost it (a restart without
                # persistence, a flush). Its readers here learn so, as from a lost Redis.
                with store.lock:
                    mirror.add(have, terminal(mirror.meta, have, STORE_UNAVAILABLE), store.ttl)
                continue
            events = events_of(entries, have)
            # The state was read before the entries: if it had ended, every event came.
            ended = state == b"ended" and have + len(events) == int(n)
            with store.lock:
                mirror.add(have, events, store.ttl if ended else None)
            if state == b"ended" and not ended:
                self._due.append(sid)

    # -- lost producers, lost Redis -----------------------------------------------------

    def _end_lost(self) -> None:
        store = self.store
        suspects = [sid for sid, m in list(store.mirrors.items())
                    if m.followed and m.meta.worker not in store.lease.live]
        if not suspects or not store.lease.fresh():
            # Without a fresh view of the leases nobody is declared lost, and a worker
            # missing before that view went stale is not counted missing since then.
            self._missing.clear()
            return
        store.lease.renew()  # a worker that started a moment ago is not lost
        now = time.monotonic()
        live = store.lease.live
        self._missing = {w: t for w, t in self._missing.items() if w not in live}
        for sid in suspects:
            mirror = store.mirrors.get(sid)
            if mirror is None or mirror.meta.worker in live:
                continue
            # Missing from two views a second apart: after a Redis outage every lease has
            # lapsed, and the producer's worker gets its turn to renew before it is lost.
            missing_since = self._missing.setdefault(mirror.meta.worker, now)
            if now - missing_since < CONFIRM:
                continue
            self.refresh({sid})
            if not mirror.followed:
                continue
            n = len(mirror.log.events)
            try:
                store.append(sid, n, terminal(mirror.meta, n, PRODUCER_LOST), end=True)
                log.warning("stream %s: its worker's lease lapsed; ended it with producer_lost",
                            sid[:8])
            except StreamClosedError:
                pass  # someone else wrote its end (or more came): read what is there
            self._due.append(sid)

    def _end_unavailable(self) -> None:
        """Redis stayed away: this worker's readers of streams produced elsewhere learn why."""
        store = self.store
        for sid, mirror in list(store.mirrors.items()):
            if mirror.followed:
                n = len(mirror.log.events)
                with store.lock:
                    mirror.add(n, terminal(mirror.meta, n, STORE_UNAVAILABLE), store.ttl)
                log.warning("stream %s: Redis is unreachable; ended it for its readers here",
                            sid[:8])

    def _recheck_cancels(self) -> None:
        """After (re)subscribing: a cancel published while the loop was not listening is in
        the stream's `cancel` flag."""
        store = self.store
        stream_ids = list(store.producers)
        if not stream_ids:
            return

        def build(pipe: Any) -> None:
            for sid in stream_ids:
                pipe.hget(store.keys.stream(sid)[0], "cancel")

        for sid, flag in zip(stream_ids, store.pipeline(build), strict=True):
            producer = store.producers.get(sid)
            if flag is not None and producer is not None:
                producer.cancel()

    def _drop_idle(self, now: float) -> None:
        store = self.store
        with store.lock:
            for sid, mirror in list(store.mirrors.items()):
                if (mirror.readers == 0 and now - mirror.idle_since > store.linger
                        and (not mirror.local or mirror.log.ended)):
                    del store.mirrors[sid]


def _close_quietly(pubsub: Any) -> None:
    with suppress(Exception):  # closing a connection that already failed
        pubsub.close()
