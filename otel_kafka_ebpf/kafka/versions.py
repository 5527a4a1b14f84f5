"""Protocol facts shared by every decoder: API names and the version from which each API is flexible.

The table covers every API key of Kafka 4.2 (from its message definitions), so that the header
version of any request and response is known even for APIs whose bodies are not decoded. The
supported body-version ranges are stated next to each decoder and gathered in `apis.SUPPORTED`.
"""

from __future__ import annotations

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
API_VERSIONS = 18
CONSUMER_GROUP_HEARTBEAT = 68
SHARE_FETCH = 78
SHARE_ACKNOWLEDGE = 79

# api_key: (name, first flexible version or None)
API_TABLE: dict[int, tuple[str, int | None]] = {
    0: ('Produce', 9),
    1: ('Fetch', 12),
    2: ('ListOffsets', 6),
    3: ('Metadata', 9),
    8: ('OffsetCommit', 8),
    9: ('OffsetFetch', 6),
    10: ('FindCoordinator', 3),
    11: ('JoinGroup', 6),
    12: ('Heartbeat', 4),
    13: ('LeaveGroup', 4),
    14: ('SyncGroup', 4),
    15: ('DescribeGroups', 5),
    16: ('ListGroups', 3),
    17: ('SaslHandshake', None),
    18: ('ApiVersions', 3),
    19: ('CreateTopics', 5),
    20: ('DeleteTopics', 4),
    21: ('DeleteRecords', 2),
    22: ('InitProducerId', 2),
    23: ('OffsetForLeaderEpoch', 4),
    24: ('AddPartitionsToTxn', 3),
    25: ('AddOffsetsToTxn', 3),
    26: ('EndTxn', 3),
    27: ('WriteTxnMarkers', 1),
    28: ('TxnOffsetCommit', 3),
    29: ('DescribeAcls', 2),
    30: ('CreateAcls', 2),
    31: ('DeleteAcls', 2),
    32: ('DescribeConfigs', 4),
    33: ('AlterConfigs', 2),
    34: ('AlterReplicaLogDirs', 2),
    35: ('DescribeLogDirs', 2),
    36: ('SaslAuthenticate', 2),
    37: ('CreatePartitions', 2),
    38: ('CreateDelegationToken', 2),
    39: ('RenewDelegationToken', 2),
    40: ('ExpireDelegationToken', 2),
    41: ('DescribeDelegationToken', 2),
    42: ('DeleteGroups', 2),
    43: ('ElectLeaders', 2),
    44: ('IncrementalAlterConfigs', 1),
    45: ('AlterPartitionReassignments', 0),
    46: ('ListPartitionReassignments', 0),
    47: ('OffsetDelete', None),
    48: ('DescribeClientQuotas', 1),
    49: ('AlterClientQuotas', 1),
    50: ('DescribeUserScramCredentials', 0),
    51: ('AlterUserScramCredentials', 0),
    52: ('Vote', 0),
    53: ('BeginQuorumEpoch', 1),
    54: ('EndQuorumEpoch', 1),
    55: ('DescribeQuorum', 0),
    56: ('AlterPartition', 0),
    57: ('UpdateFeatures', 0),
    58: ('Envelope', 0),
    59: ('FetchSnapshot', 0),
    60: ('DescribeCluster', 0),
    61: ('DescribeProducers', 0),
    62: ('BrokerRegistration', 0),
    63: ('BrokerHeartbeat', 0),
    64: ('UnregisterBroker', 0),
    65: ('DescribeTransactions', 0),
    66: ('ListTransactions', 0),
    67: ('AllocateProducerIds', 0),
    68: ('ConsumerGroupHeartbeat', 0),
    69: ('ConsumerGroupDescribe', 0),
    70: ('ControllerRegistration', 0),
    71: ('GetTelemetrySubscriptions', 0),
    72: ('PushTelemetry', 0),
    73: ('AssignReplicasToDirs', 0),
    74: ('ListConfigResources', 0),
    75: ('DescribeTopicPartitions', 0),
    76: ('ShareGroupHeartbeat', 0),
    77: ('ShareGroupDescribe', 0),
    78: ('ShareFetch', 0),
    79: ('ShareAcknowledge', 0),
    80: ('AddRaftVoter', 0),
    81: ('RemoveRaftVoter', 0),
    82: ('UpdateRaftVoter', 0),
    83: ('InitializeShareGroupState', 0),
    84: ('ReadShareGroupState', 0),
    85: ('WriteShareGroupState', 0),
    86: ('DeleteShareGroupState', 0),
    87: ('ReadShareGroupStateSummary', 0),
    88: ('StreamsGroupHeartbeat', 0),
    89: ('StreamsGroupDescribe', 0),
    90: ('DescribeShareGroupOffsets', 0),
    91: ('AlterShareGroupOffsets', 0),
    92: ('DeleteShareGroupOffsets', 0),
}

API_NAMES = {key: name for key, (name, _) in API_TABLE.items()}
API_KEYS_BY_NAME = {name.lower(): key for key, name in API_NAMES.items()}
MAX_API_VERSION = 30  # beyond any version Kafka has defined; a sanity bound for resynchronisation


def api_name(api_key: int) -> str:
    return API_NAMES.get(api_key, f"Unknown{api_key}")


# api key -> its first flexible version (APIs that have one)
FLEXIBLE_FROM: dict[int, int] = {key: entry[1] for key, entry in API_TABLE.items() if entry[1] is not None}


def is_flexible(api_key: int, version: int) -> bool:
    first = FLEXIBLE_FROM.get(api_key)
    return first is not None and version >= first


def request_header_version(api_key: int, version: int) -> int:
    return 2 if is_flexible(api_key, version) else 1


def response_header_version(api_key: int, version: int) -> int:
    # ApiVersions responses keep header v0 so that a client can always read the broker's answer.
    return 1 if api_key != API_VERSIONS and is_flexible(api_key, version) else 0
