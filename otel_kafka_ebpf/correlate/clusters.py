"""Which cluster a connection talks to: broker endpoints -> cluster id, learnt from Metadata.

A Metadata response (v2+) names the cluster and lists its brokers. The connection it came on
belongs to that cluster, and so does every broker endpoint it lists whose host is an IP address
(a host name would need a DNS lookup, which the agent does not make). Endpoints are kept per
network namespace: 127.0.0.1:9092 in one pod is not 127.0.0.1:9092 in another.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import NamedTuple

MAX_ENDPOINTS = 65536


class Endpoint(NamedTuple):
    netns: int
    addr: str
    port: int


def _literal_ip(host: str) -> str | None:
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class ClusterDirectory:
    def __init__(self) -> None:
        self._by_endpoint: OrderedDict[Endpoint, str] = OrderedDict()
        self.generation = 0  # bumped whenever something new is learnt

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def cluster_of(self, endpoint: Endpoint | None) -> str | None:
        if endpoint is None:
            return None
        return self._by_endpoint.get(endpoint)

    def learn(self, endpoint: Endpoint, cluster_id: str) -> bool:
        if self._by_endpoint.get(endpoint) == cluster_id:
            return False
        self._by_endpoint[endpoint] = cluster_id
        self._by_endpoint.move_to_end(endpoint)
        while len(self._by_endpoint) > MAX_ENDPOINTS:
            self._by_endpoint.popitem(last=False)
        self.generation += 1
        return True

    def observe_metadata(self, endpoint: Endpoint | None, response) -> str | None:
        """Learn from a decoded MetadataResponse seen on a connection to `endpoint`; returns the cluster id."""
        cluster_id = response.cluster_id
        if not cluster_id:
            return None
        if endpoint is not None:
            self.learn(endpoint, cluster_id)
            for broker in response.brokers:
                ip = _literal_ip(broker.host)
                if ip is not None and 0 < broker.port < 65536:
                    self.learn(Endpoint(endpoint.netns, ip, broker.port), cluster_id)
        return cluster_id
