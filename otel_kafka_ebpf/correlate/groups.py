"""Which consumer group each consumer instance belongs to, from its own group traffic.

A consumer instance is a process and a client id. The group coordinator may sit on another broker
than the partitions the instance fetches, so membership is learnt from whichever connection the
instance uses for JoinGroup, SyncGroup, Heartbeat, OffsetCommit, LeaveGroup (classic protocol),
ConsumerGroupHeartbeat (KIP-848) or ShareFetch/ShareGroupHeartbeat (KIP-932 share groups).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

MAX_INSTANCES = 65536

CLASSIC = "classic"
CONSUMER = "consumer"  # KIP-848
SHARE = "share"  # KIP-932


class ConsumerInstance(NamedTuple):
    pid: int
    client_id: str | None


@dataclass(slots=True)
class Membership:
    group_id: str
    protocol: str
    member_id: str | None
    first_seen_ns: int
    last_seen_ns: int
    left: bool = False  # sent LeaveGroup (or a leave heartbeat) since


class GroupDirectory:
    def __init__(self) -> None:
        self._members: OrderedDict[ConsumerInstance, Membership] = OrderedDict()
        self.generation = 0  # bumped whenever an instance's group becomes known or changes

    def __len__(self) -> int:
        return len(self._members)

    def membership(self, instance: ConsumerInstance) -> Membership | None:
        return self._members.get(instance)

    def group_of(self, instance: ConsumerInstance) -> str | None:
        m = self._members.get(instance)
        return m.group_id if m is not None else None

    def observe(self, instance: ConsumerInstance, group_id: str | None, protocol: str, member_id: str | None,
                ts_ns: int, leaving: bool = False) -> None:
        if not group_id:
            return
        m = self._members.get(instance)
        if m is None or m.group_id != group_id:
            self._members[instance] = Membership(group_id, protocol, member_id or None, ts_ns, ts_ns, leaving)
            self.generation += 1
            while len(self._members) > MAX_INSTANCES:
                self._members.popitem(last=False)
        else:
            m.last_seen_ns = max(m.last_seen_ns, ts_ns)
            m.left = leaving
            if member_id:
                m.member_id = member_id
            if protocol != m.protocol:
                m.protocol = protocol
        self._members.move_to_end(instance)

    def forget_process(self, pid: int) -> None:
        for instance in [i for i in self._members if i.pid == pid]:
            del self._members[instance]
