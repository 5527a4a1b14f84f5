"""Decoded pairs -> produced and delivered batches, each with its cluster, topic name and group.

The `Correlator` joins what one pair cannot know alone: the cluster of a connection (from Metadata on
any connection to the same broker endpoints), topic names of id-only APIs (Produce v13, Fetch v13+),
and the group of a consumer instance (from its group traffic on the coordinator's connection).
A batch that still misses one of these waits, bounded in number and time, until the fact arrives
(a client's next Metadata, the agent's own lookup, the next heartbeat) or its wait ends; then it is
handed on with what is known. Plain data: no I/O, no settings, time comes in with the events.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from ..capture.streams import ConnectionOpened, Role
from ..kafka.connection import KafkaPair
from ..kafka.primitives import DecodeError, uuid_text
from ..kafka.records import RecordBatch
from ..kafka.versions import (
    CONSUMER_GROUP_HEARTBEAT, FETCH, HEARTBEAT, JOIN_GROUP, LEAVE_GROUP, METADATA, OFFSET_COMMIT, PRODUCE,
    SHARE_FETCH, SYNC_GROUP,
)
from .clusters import ClusterDirectory, Endpoint
from .groups import CLASSIC, CONSUMER, SHARE, ConsumerInstance, GroupDirectory
from .lag import Instance, LagTracker, PartitionKey, StatusRules
from .topics import TopicRegistry

REBALANCE_IN_PROGRESS = 27  # a Heartbeat's answer while the group rebalances

MAX_PARKED = 50_000  # batches waiting for a cluster, a topic name or a group
MAX_LINKS = 128  # traceparent links kept per batch (the SDK's default span link limit)
MAX_SHARE_SESSIONS = 10_000  # connections whose share session's partitions are kept
_TRACEPARENT = b"traceparent"

# APIs only brokers and controllers send each other: a process sending one is a broker.
INTER_BROKER_APIS = frozenset({4, 5, 6, 7, 27, 52, 53, 54, 56, 58, 59, 62, 63, 67, 70, 73, 83, 84, 85, 86, 87})


@dataclass(slots=True)
class ProducedBatch:
    """One topic-partition of one Produce request, with what its response said."""

    pid: int
    client_id: str | None
    conn_id: int
    server: Endpoint | None
    cluster_id: str | None
    topic: str | None  # None while only the topic id is known
    topic_id: bytes | None
    partition: int
    base_offset: int | None  # None: acks=0, an error, or the response was not captured
    record_count: int
    first_timestamp: int  # ms: the first record's timestamp (CreateTime), -1 if unknown
    max_timestamp: int
    log_append_time: int  # ms: the broker's append time when the topic uses LogAppendTime, else -1
    attributes: int  # batch attributes: compression, timestamp type, transactional, control
    start_ns: int  # the request's first byte written
    request_end_ns: int | None  # its last byte written
    end_ns: int | None  # the response's last byte read (None: acks=0 or no response)
    acks: int
    error_code: int  # the partition's error code in the response (0: none)
    missing_response: str | None  # why there is no response: no_response (acks=0), lost, truncated, in_flight
    correlation_id: int
    traceparents: tuple[str, ...] = ()

    @property
    def topic_name(self) -> str:
        return self.topic or (uuid_text(self.topic_id) if self.topic_id else "")


@dataclass(slots=True)
class DeliveredBatch:
    """One record batch a consumer instance received in a Fetch (or ShareFetch) response."""

    pid: int
    client_id: str | None
    conn_id: int
    server: Endpoint | None
    cluster_id: str | None
    topic: str | None
    topic_id: bytes | None
    partition: int
    group: str | None
    base_offset: int
    last_offset: int
    record_count: int  # records delivered to the application (those before the fetch offset are not)
    first_timestamp: int
    max_timestamp: int
    attributes: int
    fetch_offset: int | None  # the position the consumer asked from
    high_watermark: int
    start_ns: int  # the response's first byte read
    end_ns: int  # its last byte read
    request_ns: int  # the Fetch request's first byte written
    max_wait_ms: int
    share: bool = False
    traceparents: tuple[str, ...] = ()
    _waits_for_group: bool = field(default=False, repr=False)

    @property
    def topic_name(self) -> str:
        return self.topic or (uuid_text(self.topic_id) if self.topic_id else "")


Batch = ProducedBatch | DeliveredBatch


def traceparents_of(batch: RecordBatch) -> tuple[str, ...]:
    """The distinct `traceparent` header values of a batch's records, when its bytes were captured
    (whole, or the first records with a digest's record prefix)."""
    if len(batch.data) <= 61:
        return ()
    if batch.attributes & 7 == 0 and _TRACEPARENT not in batch.data.tobytes():
        return ()
    try:
        records = batch.first_records()
    except DecodeError:
        return ()
    seen: dict[str, None] = {}
    for record in records:
        for header in record.headers:
            if header.key == "traceparent" and header.value:
                seen[header.value.decode("ascii", "replace")] = None
                if len(seen) >= MAX_LINKS:
                    return tuple(seen)
    return tuple(seen)


@dataclass(slots=True)
class _Parked:
    deadline_ns: int
    batch: Batch


class Correlator:
    """`connections`: the table of open connections (conn id -> its open event) that the correlator reads a
    pair's process and endpoint from. The pipeline shares one table between the decoder, which fills it, and
    the correlator; without one the correlator keeps its own (filled by `connection_opened`)."""

    def __init__(self, *, connections: dict[int, ConnectionOpened] | None = None,
                 resolve_wait_ns: int = 10_000_000_000, group_wait_ns: int = 6_000_000_000,
                 links: bool = True, rules: StatusRules | None = None) -> None:
        self.topics = TopicRegistry()
        self.clusters = ClusterDirectory()
        self.groups = GroupDirectory()
        self.connections: dict[int, ConnectionOpened] = {} if connections is None else connections
        self.broker_pids: set[int] = set()
        self.resolve_wait_ns = resolve_wait_ns
        self.group_wait_ns = group_wait_ns
        self.links = links
        self.lag = LagTracker(rules)
        self._share_sessions: dict[int, set[tuple[bytes, int]]] = {}  # connection -> its share session's partitions
        self.stats: Counter = Counter()
        self._parked: deque[_Parked] = deque()
        self._learnt = 0  # generation of what was known when the parked batches were last checked
        self._instance_first_seen: dict[ConsumerInstance, int] = {}
        self._wanted: set[Endpoint] = set()  # endpoints whose cluster or topics a lookup could tell

    # --- connections and processes -------------------------------------------------------------

    def connection_opened(self, event: ConnectionOpened) -> None:
        self.connections[event.conn_id] = event

    def connection_closed(self, conn_id: int, ts_ns: int) -> None:
        self.lag.connection_closed(conn_id, ts_ns)
        self._share_sessions.pop(conn_id, None)

    def mark_broker(self, pid: int) -> None:
        self.broker_pids.add(pid)

    def is_broker_pair(self, pair: KafkaPair) -> bool:
        """Traffic of a broker process (inter-broker and controller APIs, or its own client connections)."""
        conn = self.connections.get(pair.conn_id)
        if conn is None:
            return pair.api_key in INTER_BROKER_APIS
        if pair.api_key in INTER_BROKER_APIS:
            self.broker_pids.add(conn.pid)
            return True
        return conn.pid in self.broker_pids

    def endpoint(self, conn_id: int) -> Endpoint | None:
        conn = self.connections.get(conn_id)
        if conn is None or conn.role == Role.SERVER:
            return None
        return Endpoint(conn.netns, conn.remote_addr, conn.remote_port)

    # --- pairs -----------------------------------------------------------------------------------

    def on_pair(self, pair: KafkaPair) -> list[Batch]:
        """Learn from a pair; returns the batches it completes or releases."""
        api = pair.api_key
        conn = self.connections.get(pair.conn_id)
        if conn is not None and conn.role == Role.SERVER:
            return []  # the broker's end of a connection (--server-side): its client reports the batches
        if api == METADATA:
            if pair.response is not None:
                return self.learn_metadata(self.endpoint(pair.conn_id), pair.response)
            return []
        if conn is not None and (conn.pid in self.broker_pids or api in INTER_BROKER_APIS):
            self.broker_pids.add(conn.pid)
            return []
        pid = conn.pid if conn is not None else 0
        if api == PRODUCE:
            produced = self._produced(pair, pid)
            self._track_produced(produced)
            return self._admit(produced, pair.request_ts_ns)
        if api == FETCH:
            delivered = self._delivered(pair, pid)
            self._track_fetch(pair, pid)
            return self._admit(delivered, pair.request_ts_ns)
        if api == SHARE_FETCH:
            self._observe_share(pair, pid)
            self._track_share_fetch(pair, pid)
            return self._admit(self._share_delivered(pair, pid), pair.request_ts_ns)
        if api in _GROUP_APIS:
            self._observe_group(pair, pid)
            if api == OFFSET_COMMIT:
                self._track_commit(pair, pid)
            return self._recheck(pair.request_ts_ns)
        return []

    def learn_offsets(self, endpoint: Endpoint, response, ts_ns: int) -> None:
        """A ListOffsets (latest) answer of the agent's own: high watermarks from the leader."""
        cluster = self.clusters.cluster_of(endpoint)
        for p in response.partitions:
            if p.error_code == 0 and p.offset >= 0 and p.topic:
                self.lag.high_watermark(PartitionKey(cluster, p.topic, p.partition), p.offset, ts_ns)

    def learn_metadata(self, endpoint: Endpoint | None, response, ts_ns: int = 0) -> list[Batch]:
        self.topics.observe_metadata(response)
        self.clusters.observe_metadata(endpoint, response)
        return self._recheck(ts_ns)

    def tick(self, now_ns: int) -> list[Batch]:
        """Batches completed since, or whose wait is over (handed on with what is known)."""
        if not self._parked:
            return []
        self._learnt = self._generation()
        out = []
        still: deque[_Parked] = deque()
        for item in self._parked:
            if self._fill(item.batch, now_ns):
                out.append(item.batch)
            elif item.deadline_ns <= now_ns:
                self._fill(item.batch, None)
                self.stats["released_unresolved"] += 1
                out.append(item.batch)
            else:
                still.append(item)
        self._parked = still
        return out

    def flush(self) -> list[Batch]:
        """End of input: everything still waiting, with what is known."""
        out = []
        while self._parked:
            batch = self._parked.popleft().batch
            self._fill(batch, None)
            out.append(batch)
        return out

    def wanted_endpoints(self) -> set[Endpoint]:
        """Broker endpoints whose cluster (or topic names) a Metadata lookup of the agent's own would tell."""
        wanted, self._wanted = self._wanted, set()
        return wanted

    @property
    def parked(self) -> int:
        return len(self._parked)

    # --- internals -------------------------------------------------------------------------------

    def _generation(self) -> int:
        return self.clusters.generation + len(self.topics) + self.groups.generation

    def _admit(self, batches: list[Batch], ts_ns: int) -> list[Batch]:
        if not batches:
            return batches
        ready = []
        for batch in batches:
            if self._fill(batch, ts_ns):
                ready.append(batch)
                continue
            if len(self._parked) >= MAX_PARKED:
                oldest = self._parked.popleft().batch
                self._fill(oldest, None)
                self.stats["released_parking_full"] += 1
                ready.append(oldest)
            self._parked.append(_Parked(ts_ns + self.resolve_wait_ns, batch))
            self.stats["parked"] += 1
        return ready

    def _fill(self, batch: Batch, now_ns: int | None) -> bool:
        """Complete a batch from what is known; True when nothing it needs is missing any more.

        `now_ns` None: no more waiting, take what is known."""
        complete = True
        if batch.cluster_id is None:
            batch.cluster_id = self.clusters.cluster_of(batch.server)
            if batch.cluster_id is None:
                complete = False
                if batch.server is not None:
                    self._wanted.add(batch.server)
        if batch.topic is None and batch.topic_id is not None:
            batch.topic = self.topics.name(batch.topic_id)
            if batch.topic is None:
                complete = False
                if batch.server is not None:
                    self._wanted.add(batch.server)
        if type(batch) is DeliveredBatch and batch.group is None:
            instance = ConsumerInstance(batch.pid, batch.client_id)
            batch.group = self.groups.group_of(instance)
            if batch.group is None and batch._waits_for_group:
                first = self._instance_first_seen.get(instance, batch.start_ns)
                if now_ns is not None and now_ns < first + self.group_wait_ns:
                    complete = False
        return complete

    def _recheck(self, now_ns: int) -> list[Batch]:
        generation = self._generation()
        if generation == self._learnt or not self._parked:
            self._learnt = generation
            return []
        self._learnt = generation
        out = []
        still = deque()
        for item in self._parked:
            if self._fill(item.batch, now_ns):
                out.append(item.batch)
            else:
                still.append(item)
        self._parked = still
        return out

    def _conn_facts(self, pair: KafkaPair) -> tuple[Endpoint | None, str | None, bool]:
        conn = self.connections.get(pair.conn_id)
        endpoint = self.endpoint(pair.conn_id)
        mid_stream = conn is None or conn.role == Role.UNKNOWN
        return endpoint, self.clusters.cluster_of(endpoint), mid_stream

    def _produced(self, pair: KafkaPair, pid: int) -> list[Batch]:
        request = pair.request
        response = pair.response
        results = {}
        if response is not None:
            for p in response.partitions:
                results[(p.topic_id or p.topic, p.partition)] = p
        endpoint, cluster, _ = self._conn_facts(pair)
        out: list[Batch] = []
        missing = pair.response_error if response is None else None
        if request is None:
            self.stats["produce_requests_not_decoded"] += 1
            return out
        for p in request.partitions:
            batches = p.batches
            if not batches:
                continue
            result = results.get((p.topic_id or p.topic, p.partition))
            base_offset = error_code = None
            log_append_time = -1
            if result is not None:
                error_code = result.error_code
                if error_code == 0 and result.base_offset >= 0:
                    base_offset = result.base_offset
                log_append_time = result.log_append_time_ms
            first = batches[0]
            traceparents = ()
            if self.links:
                traceparents = tuple(dict.fromkeys(t for b in batches for t in traceparents_of(b)))[:MAX_LINKS]
            out.append(ProducedBatch(
                pid, pair.client_id, pair.conn_id, endpoint, cluster, p.topic, p.topic_id, p.partition, base_offset,
                sum(b.record_count for b in batches), first.first_timestamp,
                max(b.max_timestamp for b in batches), log_append_time, first.attributes,
                pair.request_ts_ns, pair.request_end_ts_ns, pair.response_ts_ns, request.acks,
                error_code or 0, missing if result is None else None, pair.correlation_id, traceparents))
        return out

    def _instance_seen(self, pid: int, client_id: str | None, ts_ns: int) -> None:
        instance = ConsumerInstance(pid, client_id)
        if instance not in self._instance_first_seen:
            if len(self._instance_first_seen) > 65536:
                self._instance_first_seen.clear()
            self._instance_first_seen[instance] = ts_ns

    def _delivered(self, pair: KafkaPair, pid: int) -> list[Batch]:
        response = pair.response
        request = pair.request
        if response is None or request is None or pair.response_start_ts_ns is None:
            return []
        if request.replica_id >= 0:
            return []  # a follower broker replicating
        endpoint, cluster, mid_stream = self._conn_facts(pair)
        self._instance_seen(pid, pair.client_id, pair.request_ts_ns)
        group = self.groups.group_of(ConsumerInstance(pid, pair.client_id))
        offsets = pair.fetch_offsets or {}
        read_committed = request.isolation_level == 1
        out: list[Batch] = []
        for p in response.partitions:
            if not p.batches:
                continue
            fetch_offset = offsets.get((p.topic_id or p.topic, p.partition))
            aborted = {}
            if read_committed and p.aborted_transactions:
                for a in sorted(p.aborted_transactions, key=lambda a: a.first_offset):
                    aborted.setdefault(a.producer_id, []).append(a.first_offset)
            aborting: set[int] = set()
            for b in p.batches:
                if b.partial:
                    continue  # cut off by the response's size limit: the client fetches it again
                if aborted or aborting:
                    starts = aborted.get(b.producer_id)
                    if starts and starts[0] <= b.base_offset:
                        starts.pop(0)
                        aborting.add(b.producer_id)
                    if b.is_control:
                        aborting.discard(b.producer_id)
                        continue
                    if b.producer_id in aborting:
                        self.stats["aborted_batches_skipped"] += 1
                        continue
                if b.is_control:
                    continue  # transaction markers: nothing for the application
                count = _delivered_count(b, fetch_offset)
                if count <= 0:
                    continue
                traceparents = traceparents_of(b) if self.links else ()
                out.append(DeliveredBatch(
                    pid, pair.client_id, pair.conn_id, endpoint, cluster, p.topic, p.topic_id, p.partition, group,
                    b.base_offset, b.last_offset, count, b.first_timestamp, b.max_timestamp, b.attributes,
                    fetch_offset, p.high_watermark, pair.response_start_ts_ns, pair.response_ts_ns,
                    pair.request_ts_ns, request.max_wait_ms, False, traceparents, group is None and mid_stream))
        return out

    def _share_delivered(self, pair: KafkaPair, pid: int) -> list[Batch]:
        response = pair.response
        request = pair.request
        if response is None or request is None or pair.response_start_ts_ns is None:
            return []
        endpoint, cluster, _ = self._conn_facts(pair)
        group = request.group_id
        out: list[Batch] = []
        for p in response.partitions:
            if not p.batches or not p.acquired:
                continue
            for b in p.batches:
                if b.partial or b.is_control:
                    continue
                count = 0
                for a in p.acquired:
                    lo, hi = max(a.first_offset, b.base_offset), min(a.last_offset, b.last_offset)
                    if hi >= lo:
                        count += min(hi - lo + 1, b.record_count)
                if count <= 0:
                    continue
                out.append(DeliveredBatch(
                    pid, pair.client_id, pair.conn_id, endpoint, cluster, None, p.topic_id, p.partition, group,
                    b.base_offset, b.last_offset, min(count, b.record_count), b.first_timestamp, b.max_timestamp,
                    b.attributes, None, -1, pair.response_start_ts_ns, pair.response_ts_ns, pair.request_ts_ns,
                    request.max_wait_ms, True, traceparents_of(b) if self.links else ()))
        return out

    # --- lag observations ------------------------------------------------------------------------

    def partition_key(self, endpoint: Endpoint | None, topic: str | None, topic_id: bytes | None,
                      partition: int) -> PartitionKey | None:
        """The partition's key for lag state: by cluster and topic name; None while the name is unknown."""
        name = topic or self.topics.name(topic_id)
        if name is None:
            self.stats["lag_topic_unresolved"] += 1
            if endpoint is not None:
                self._wanted.add(endpoint)
            return None
        return PartitionKey(self.clusters.cluster_of(endpoint), name, partition)

    def _track_produced(self, produced: list[Batch]) -> None:
        lag = self.lag
        for b in produced:
            if b.base_offset is not None:
                key = self.partition_key(b.server, b.topic, b.topic_id, b.partition)
                if key is not None:
                    lag.produced(key, b.base_offset, b.record_count, b.start_ns)

    def _track_fetch(self, pair: KafkaPair, pid: int) -> None:
        request, response = pair.request, pair.response
        if request is None or response is None or request.replica_id >= 0 or pair.response_ts_ns is None:
            return
        endpoint = self.endpoint(pair.conn_id)
        instance = Instance(pid, pair.client_id)
        group = self.groups.group_of(ConsumerInstance(pid, pair.client_id))
        lag = self.lag
        seen = set()
        throttle = response.throttle_time_ms
        limits = {(q.topic_id or q.topic, q.partition): q.partition_max_bytes for q in request.partitions}
        # a response as full as the request's whole bound (fetch.max.bytes) bounds each partition it left records in
        total = sum(p.records_size for p in response.partitions if p.records_size > 0)
        response_fill = total / request.max_bytes if request.max_bytes > 0 else 0.0
        for p in response.partitions:
            key = self.partition_key(endpoint, p.topic, p.topic_id, p.partition)
            if key is None:
                continue
            topic_key = (p.topic_id or p.topic, p.partition)
            seen.add(topic_key)
            if p.error_code == 0:
                lag.high_watermark(key, p.high_watermark, pair.response_ts_ns)
            for b in p.batches:
                if not b.is_control:
                    lag.fetched_batch(key, b.base_offset, b.last_offset, b.first_timestamp, b.max_timestamp,
                                      b.timestamp_type == 1)
            fetch_offset = (pair.fetch_offsets or {}).get(topic_key)
            if fetch_offset is not None and p.error_code == 0:
                delivered = sum(_delivered_count(b, fetch_offset) for b in p.batches
                                if not b.is_control and not b.partial)
                limit = limits.get(topic_key, 0)
                fill = p.records_size / limit if limit > 0 and p.records_size >= 0 else None
                if response_fill and p.high_watermark > fetch_offset + delivered:  # records left behind
                    fill = max(fill or 0.0, response_fill)
                lag.fetched(instance, group, pair.conn_id, key, fetch_offset, p.high_watermark, pair.request_ts_ns,
                            pair.response_ts_ns, request.max_wait_ms, not p.batches, leader=endpoint,
                            delivered=delivered, throttle_ms=throttle, fill=fill)
            elif p.error_code:
                lag.fetch_failed(instance, key, p.error_code, pair.response_ts_ns)
        for topic_key, fetch_offset in (pair.fetch_offsets or {}).items():
            if topic_key in seen:
                continue  # an incremental response leaves out partitions with nothing new: still fetched
            t = topic_key[0]
            key = self.partition_key(endpoint, t if isinstance(t, str) else None,
                                     t if isinstance(t, bytes) else None, topic_key[1])
            if key is not None:
                lag.fetched(instance, group, pair.conn_id, key, fetch_offset, -1, pair.request_ts_ns,
                            pair.response_ts_ns, request.max_wait_ms, True, leader=endpoint, delivered=0,
                            throttle_ms=throttle)

    def _track_share_fetch(self, pair: KafkaPair, pid: int) -> None:
        """A share group member's fetch: the group's position in each partition of the member's share session
        (KIP-932: a request lists the partitions it adds or acknowledges, epoch 0 starts a session, -1 ends it)."""
        request, response = pair.request, pair.response
        if request is None or not request.group_id:
            return
        session = self._share_sessions.get(pair.conn_id)
        if session is None or request.share_session_epoch == 0:
            if len(self._share_sessions) >= MAX_SHARE_SESSIONS and pair.conn_id not in self._share_sessions:
                self._share_sessions.pop(next(iter(self._share_sessions)))
            session = self._share_sessions[pair.conn_id] = set()
        session.update((p.topic_id, p.partition) for p in request.partitions)
        for topic_id, partitions in request.forgotten:
            session.difference_update((topic_id, i) for i in partitions)
        if request.share_session_epoch == -1:
            self._share_sessions.pop(pair.conn_id, None)
        if response is None or response.error_code or pair.response_ts_ns is None:
            return
        endpoint = self.endpoint(pair.conn_id)
        instance = Instance(pid, pair.client_id)
        acquired: dict[tuple[bytes, int], int | None] = dict.fromkeys(session)  # None: nothing acquired
        for p in response.partitions:
            if p.error_code:
                acquired.pop((p.topic_id, p.partition), None)
            else:
                ends = [a.last_offset + 1 for a in p.acquired]
                acquired[(p.topic_id, p.partition)] = max(ends) if ends else None
        batches = {(p.topic_id, p.partition): p.batches for p in response.partitions}
        for (topic_id, partition), end in acquired.items():
            key = self.partition_key(endpoint, None, topic_id, partition)
            if key is None:
                continue
            for b in batches.get((topic_id, partition), ()):
                if not b.is_control:
                    self.lag.fetched_batch(key, b.base_offset, b.last_offset, b.first_timestamp, b.max_timestamp,
                                           b.timestamp_type == 1)
            self.lag.share_fetched(instance, request.group_id, pair.conn_id, key, end, pair.request_ts_ns,
                                   pair.response_ts_ns, request.max_wait_ms, leader=endpoint)

    def _track_commit(self, pair: KafkaPair, pid: int) -> None:
        request = pair.request
        if request is None or not request.group_id:
            return
        failed = set()
        if pair.response is not None:
            failed = {(p.topic_id or p.topic, p.partition) for p in pair.response.partitions if p.error_code}
        endpoint = self.endpoint(pair.conn_id)
        for p in request.partitions:
            if (p.topic_id or p.topic, p.partition) in failed or p.offset < 0:
                continue
            key = self.partition_key(endpoint, p.topic, p.topic_id, p.partition)
            if key is not None:
                self.lag.committed_offset(request.group_id, key, p.offset, pair.request_ts_ns,
                                          Instance(pid, pair.client_id))

    def _observe_group(self, pair: KafkaPair, pid: int) -> None:
        request = pair.request
        if request is None:
            return
        instance = ConsumerInstance(pid, pair.client_id)
        api = pair.api_key
        ts = pair.request_ts_ns
        if api == CONSUMER_GROUP_HEARTBEAT:
            member_id = request.member_id
            if pair.response is not None and pair.response.member_id:
                member_id = pair.response.member_id
            self.groups.observe(instance, request.group_id, CONSUMER, member_id, ts,
                                leaving=request.member_epoch < 0)
        elif api == LEAVE_GROUP:
            self.groups.observe(instance, request.group_id, CLASSIC, None, ts, leaving=True)
            self.lag.group_changed(request.group_id, Instance(pid, pair.client_id), ts)
        elif api == OFFSET_COMMIT:
            member = self.groups.membership(instance)
            self.groups.observe(instance, request.group_id, member.protocol if member else CLASSIC,
                                request.member_id, ts)
        else:  # JoinGroup, SyncGroup, Heartbeat
            member_id = request.member_id
            if api == JOIN_GROUP and pair.response is not None and pair.response.member_id:
                member_id = pair.response.member_id
            self.groups.observe(instance, request.group_id, CLASSIC, member_id, ts)
            if api in (JOIN_GROUP, SYNC_GROUP) or (pair.response is not None and
                                                  getattr(pair.response, "error_code", 0) == REBALANCE_IN_PROGRESS):
                self.lag.group_changed(request.group_id, Instance(pid, pair.client_id), ts)

    def _observe_share(self, pair: KafkaPair, pid: int) -> None:
        request = pair.request
        if request is not None and request.group_id:
            self.groups.observe(ConsumerInstance(pid, pair.client_id), request.group_id, SHARE, request.member_id,
                                pair.request_ts_ns)


_GROUP_APIS = frozenset({JOIN_GROUP, SYNC_GROUP, HEARTBEAT, LEAVE_GROUP, OFFSET_COMMIT, CONSUMER_GROUP_HEARTBEAT})


def _delivered_count(b: RecordBatch, fetch_offset: int | None) -> int:
    """Records of a fetched batch the client hands to the application: those at or after its position."""
    if fetch_offset is None or b.base_offset >= fetch_offset:
        return b.record_count
    if fetch_offset > b.last_offset:
        return 0
    return min(b.record_count, b.last_offset - fetch_offset + 1)
