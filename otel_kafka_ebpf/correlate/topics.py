"""Topic id <-> name, learnt from Metadata responses seen on any connection of a cluster.

Produce v13+, Fetch v13+ and the KIP-848/KIP-932 APIs name topics by id only. Topic ids are
random UUIDs, so an id resolves to one name whatever the cluster; names map back to ids per
cluster (a name can exist in two clusters with different ids).
"""

from __future__ import annotations

from collections.abc import Iterable

_NO_ID = bytes(16)  # the broker's "no topic id" (Metadata before ids, or unknown topic)


class TopicRegistry:
    def __init__(self) -> None:
        self._names: dict[bytes, str] = {}
        self._ids: dict[tuple[str | None, str], bytes] = {}

    def __len__(self) -> int:
        return len(self._names)

    def observe_metadata(self, response, cluster_id: str | None = None) -> int:
        """Learn from a decoded MetadataResponse; returns how many topics it named."""
        cluster = response.cluster_id if response.cluster_id is not None else cluster_id
        learnt = 0
        for topic in response.topics:
            if topic.error_code == 0 and topic.name and topic.topic_id and topic.topic_id != _NO_ID:
                self.add(topic.topic_id, topic.name, cluster)
                learnt += 1
        return learnt

    def add(self, topic_id: bytes, name: str, cluster_id: str | None = None) -> None:
        self._names[topic_id] = name
        self._ids[(cluster_id, name)] = topic_id

    def name(self, topic_id: bytes | None) -> str | None:
        return self._names.get(topic_id) if topic_id else None

    def topic_id(self, name: str, cluster_id: str | None = None) -> bytes | None:
        return self._ids.get((cluster_id, name))

    def names(self) -> Iterable[str]:
        return set(self._names.values())
