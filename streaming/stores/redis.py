"""The Redis store: every stream in Redis (or Valkey, or a Redis Cluster), for every worker and
host. The one module that imports `redis`.

Each write is one Lua script (layout and scripts: `redis_scripts`); the appends of all of this
worker's streams share round trips (`redis_batch`), one per flush of each relay's buffer at
most. Readers never hold a connection: events this worker produced are mirrored in memory, and
streams produced elsewhere are mirrored by one follow loop per worker (`redis_follow`) on a
single pub/sub connection. One lease per worker (`redis_lease`); counters over live workers
(`redis_counters`). Commands go through a bounded blocking pool; every call has socket timeouts
and is retried for `retry_for` seconds, then raises `errors.StoreUnavailableError` (never a
`redis` exception).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, NoScriptError, TryAgainError
from redis.retry import Retry

from ..errors import StoreUnavailableError
from ..settings import Settings
from . import redis_scripts as lua
from .base import Counter, IndexKey, Producer, StreamClosedError, StreamMeta, UnknownStreamError
from .redis_batch import Batcher
from .redis_counters import Counters
from .redis_follow import FollowLoop
from .redis_lease import LeaseLoop
from .redis_mirror import Mirror

log = logging.getLogger(__name__)

T = TypeVar("T")

# Worth another attempt within the retry window: the server is away, busy or failing over
# (the builtin errors: the batched writer's own).
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError,
              redis.ReadOnlyError, redis.RedisClusterException, ConnectionError, TimeoutError)


class RedisStore:
    """`StreamStore` on Redis. Starts its lease and follow loop at once; connects lazily."""

    may_block = True

    def __init__(self, settings: Settings, *, worker_id: str | None = None,
                 lease: float = 5.0, retry_for: float = 2.0,
                 max_connections: int = 32, linger: float = 5.0) -> None:
        if not settings.REDIS_URL:
            raise ValueError("RedisStore needs REDIS_URL")
        self.worker_id = worker_id or secrets.token_hex(8)
        self.keys = lua.Keys(settings.REDIS_PREFIX)
        self.retry_for = retry_for
        self.lease_seconds = lease
        self.linger = linger
        self._ended_ttl_ms = max(1, int(settings.STREAM_TTL * 1000))
        # Running streams outlive STREAM_TIMEOUT, the longest a producer runs, by the time it
        # may then be resumed: no key is ever without a TTL, even if its worker dies.
        self.running_ttl_ms = int((settings.STREAM_TIMEOUT + settings.STREAM_TTL + 60) * 1000)
        self._index_ttl_ms = max(1, int((settings.STREAM_TIMEOUT + settings.STREAM_TTL) * 1000))
        self.ttl = settings.STREAM_TTL
        timeouts: dict[str, Any] = {
            "socket_timeout": 2.0, "socket_connect_timeout": 2.0,
            # Retrying is ours (`call`): one window, whatever the command.
            "retry": Retry(NoBackoff(), 0),
            # CLIENT LIST tells which worker holds which connection.
            "client_name": f"llmstream-{self.worker_id}",
        }
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._connecting = threading.Lock()
        self._cluster_args: tuple[str, dict[str, Any]] | None = None
        if settings.REDIS_CLUSTER:
            # Made on first use: the cluster client reads the slot map at once, and a worker
            # must start (and answer /readyz 503) while Redis is away.
            self._cluster_args = (settings.REDIS_URL,
                                  {"max_connections": max_connections, **timeouts})
        else:
            pool = redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, max_connections=max_connections, timeout=retry_for,
                **timeouts)
            self._use(redis.Redis(connection_pool=pool))
        self.mirrors: dict[str, Mirror] = {}
        self.lock = threading.Lock()
        self.producers: dict[str, Producer] = {}
        self.closed = threading.Event()
        # Socket timeouts bound a round trip; a batch waits for the one before it at most.
        # redis-py's cluster pipelines refuse scripts: there each append is its own call.
        self._writer = None if settings.REDIS_CLUSTER else Batcher(
            self._send_appends, self.closed, timeout=retry_for + 8)
        self.counters = Counters(self)
        self.lease = LeaseLoop(self)  # its loop starts now: what it uses is made above
        self._follow = FollowLoop(self)

    # -- the log ------------------------------------------------------------------------

    def create(self, meta: StreamMeta, events: list[bytes]) -> None:
        if not self.lease.fresh():
            self.lease.renew()  # a stream must not start under a lapsed lease
        fields = lua.meta_fields(meta)
        meta_key, log_key, _ = self.keys.stream(meta.stream_id)
        ok = self.call(lambda retried: self.script(
            "CREATE", [meta_key, log_key],
            [self.running_ttl_ms, int(retried), meta.resume_token, len(fields) // 2, *fields,
             *events]))
        if not ok:
            raise ValueError("stream id already in use")
        mirror = Mirror(meta, local=True)
        mirror.log.events.extend(events)
        with self.lock:
            self.mirrors[meta.stream_id] = mirror

    def append(self, stream_id: str, seq: int, events: list[bytes], *, end: bool = False) -> None:
        keys = self.keys.stream(stream_id)
        channel = self.keys.notify(stream_id)

        def run(retried: bool) -> Any:
            args = [seq, int(end), self._ended_ttl_ms, int(retried), channel, *events]
            if self._writer is None:
                return self.script("APPEND", list(keys), args)
            return self._writer.submit([*keys, *args])

        result = self.call(run)
        if result == -1:
            # A stream being written cannot expire: Redis lost it (a restart without
            # persistence, an eviction, a flush), which is the contract's store_unavailable.
            raise StoreUnavailableError(f"stream {stream_id[:8]} is gone from Redis")
        if result == 0:
            raise StreamClosedError(f"stream {stream_id[:8]} does not hold {seq} events, "
                                    f"or has ended")
        mirror = self.mirrors.get(stream_id)
        if mirror is not None:
            # Only now: a reader here never sees what other workers could not read.
            with self.lock:
                mirror.add(seq, events, self.ttl if end else None)
        if result == 2:
            # Someone cancelled and the message may have been lost: the flag says it again.
            producer = self.producers.get(stream_id)
            if producer is not None:
                producer.cancel()

    def read(self, stream_id: str, cursor: int, timeout: float) -> tuple[list[bytes], bool]:
        while True:
            mirror = self.mirrors.get(stream_id)
            if mirror is not None and mirror.expired():
                # Redis holds the truth on expiry: ask it.
                with self.lock:
                    self.mirrors.pop(stream_id, None)
                mirror = None
            if mirror is None:
                mirror_or_answer = self._follow.open(stream_id, cursor)
                if isinstance(mirror_or_answer, tuple):
                    return mirror_or_answer
                mirror = mirror_or_answer
            mirror.readers += 1
            if self.mirrors.get(stream_id) is mirror:
                break
            mirror.readers -= 1  # dropped as idle just now (threads): take it again
        try:
            return mirror.log.read(cursor, timeout)
        finally:
            mirror.readers -= 1
            mirror.idle_since = time.monotonic()

    def status(self, stream_id: str) -> tuple[int, bool]:
        mirror = self.mirrors.get(stream_id)
        if mirror is not None and mirror.local and not mirror.expired():
            return len(mirror.log.events), mirror.log.ended
        return self.redis_status(stream_id)

    def redis_status(self, stream_id: str) -> tuple[int, bool]:
        """`status` as Redis has it, whatever this worker holds."""
        m, _, _ = self.keys.stream(stream_id)
        state, n = self.call(lambda _: self.client.hmget(m, "state", "n"))
        if state is None:
            raise UnknownStreamError(stream_id)
        return int(n), state == b"ended"

    def meta(self, stream_id: str) -> StreamMeta:
        mirror = self.mirrors.get(stream_id)
        if mirror is not None and not mirror.expired():
            return mirror.meta
        m, _, _ = self.keys.stream(stream_id)
        found = lua.meta_from(stream_id, self.call(lambda _: self.client.hgetall(m)))
        if found is None:
            raise UnknownStreamError(stream_id)
        return found

    def wake(self, stream_id: str) -> None:
        mirror = self.mirrors.get(stream_id)
        if mirror is not None:
            mirror.log.notify()

    def end_locally(self, stream_id: str, events: list[bytes]) -> None:
        mirror = self.mirrors.get(stream_id)
        if mirror is not None:
            seq = len(mirror.log.events)
            with self.lock:
                mirror.add(seq, events, self.ttl)
            if mirror.local:
                # Written to Redis when it is back, the same bytes if it holds `seq` events.
                self.lease.orphans[stream_id] = (seq, events)

    # -- control ------------------------------------------------------------------------

    def register(self, stream_id: str, producer: Producer) -> None:
        self.producers[stream_id] = producer

    def unregister(self, stream_id: str) -> None:
        self.producers.pop(stream_id, None)
        mirror = self.mirrors.get(stream_id)
        if mirror is not None and not mirror.log.ended:
            # Its producer stopped without an end here (another worker may have written it):
            # follow it like any stream produced elsewhere.
            mirror.local = False

    def cancel(self, stream_id: str) -> None:
        producer = self.producers.get(stream_id)
        if producer is not None:
            producer.cancel()
            return
        m, _, _ = self.keys.stream(stream_id)
        self.call(lambda _: self.script("CANCEL", [m], [self.keys.control(""), stream_id]))

    # -- presence and limits ------------------------------------------------------------

    def acquire(self, counter: Counter, limit: int) -> bool:
        return self.counters.acquire(counter, limit)

    def release(self, counter: Counter) -> None:
        self.counters.release(counter)

    def count(self, counter: Counter) -> int:
        return self.counters.count(counter)

    # -- indexes ------------------------------------------------------------------------

    def index_add(self, key: IndexKey, value: str) -> str | None:
        k = self.keys.index(*key)
        old = self.call(lambda _: self.script("INDEX_ADD", [k], [value, self._index_ttl_ms]))
        return None if old is None else bytes(old).decode()

    def index_swap(self, key: IndexKey, value: str) -> str | None:
        k = self.keys.index(*key)
        old = self.call(lambda _: self.client.set(k, value, px=self._index_ttl_ms, get=True))
        return None if old is None else bytes(old).decode()

    def index_get(self, key: IndexKey) -> str | None:
        k = self.keys.index(*key)
        value = self.call(lambda _: self.client.get(k))
        return None if value is None else bytes(value).decode()

    def index_remove(self, key: IndexKey, value: str) -> None:
        k = self.keys.index(*key)
        self.call(lambda _: self.script("INDEX_REMOVE", [k], [value]))

    # -- health -------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, redis.RedisClusterException):
            return False

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        loops = [self.lease.runner, self._follow.runner]
        if self._writer is not None:
            loops.append(self._writer.runner)
        for loop in loops:
            loop.join(5)
        client = self._client
        if client is None:
            return
        with suppress(redis.RedisError, redis.RedisClusterException):
            # Workers following this one's streams find them lost at once, not after a lease.
            client.zrem(self.keys.workers, self.worker_id)
        client.close()
        if not isinstance(client, redis.RedisCluster):
            client.connection_pool.disconnect()  # a pool we made: Redis leaves it open

    # -- inside: calls and the lease ----------------------------------------------------

    def call(self, fn: Callable[[bool], T]) -> T:
        """`fn(retried)`, retried on transient failures for `retry_for` seconds."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        retried = False
        while True:
            try:
                return fn(retried)
            except _TRANSIENT as exc:
                if time.monotonic() + delay >= deadline or self.closed.is_set():
                    raise StoreUnavailableError("the Redis store is unreachable") from exc
            except redis.RedisError as exc:
                raise StoreUnavailableError(f"the Redis store failed: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            retried = True

    def pipeline(self, build: Callable[[Any], None]) -> list[Any]:
        """Commands queued by `build(pipe)`, in one round trip per node."""
        def run(_: bool) -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            return list(pipe.execute())
        return self.call(run)

    def _send_appends(self, batch: list[Sequence[Any]]) -> list[Any]:
        """Every waiting append in one pipeline (per node): the batched writer's round trip."""
        sha = self._scripts["APPEND"].sha

        def run(items: list[Sequence[Any]]) -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for args in items:
                pipe.evalsha(sha, 3, *args)
            return list(pipe.execute(raise_on_error=False))

        results = run(batch)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted (or failed over) since the script was loaded
            self.client.script_load(lua.APPEND)
            for i, result in zip(missing, run([batch[i] for i in missing]), strict=True):
                results[i] = result
        return results

    def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        client = self.client
        return self._scripts[name](keys=keys, args=args, client=client)

    @property
    def client(self) -> Any:
        """The redis-py client (a cluster's is made here, on first use)."""
        client = self._client
        if client is None:
            assert self._cluster_args is not None
            with self._connecting:
                if self._client is None:
                    url, kwargs = self._cluster_args
                    try:
                        self._use(redis.RedisCluster.from_url(url, **kwargs))
                    except redis.RedisClusterException as exc:
                        raise redis.ConnectionError(f"no Redis Cluster node: {exc}") from exc
                client = self._client
        return client

    def _use(self, client: Any) -> None:
        self._scripts = {name: client.register_script(getattr(lua, name)) for name in (
            "CREATE", "APPEND", "CANCEL", "ACQUIRE", "RELEASE", "LEASE", "INDEX_ADD",
            "INDEX_REMOVE")}
        self._client = client  # last: whoever sees the client sees its scripts

    def pubsub(self) -> Any:
        return self.client.pubsub(ignore_subscribe_messages=True)

    def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy, or None if CONFIG is not allowed (managed Redis)."""
        try:
            reply = self.client.config_get("maxmemory-policy")
        except (redis.RedisError, redis.RedisClusterException):
            return None
        for value in (reply.values() if isinstance(reply, dict) else []):
            return value.decode() if isinstance(value, bytes) else str(value)
        return None
