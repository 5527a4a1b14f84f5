"""Sans-IO Kafka protocol decoder: captured byte streams in, typed request/response pairs out.

No I/O and no OpenTelemetry here. Entry points: `KafkaStreamDecoder` (all connections of a
capture), `KafkaConnection` (one connection), `FrameSplitter` (one direction), and the per-API
`decode_request` / `decode_response` functions listed in `apis.DECODERS`.
"""

from .apis import SUPPORTED, UnsupportedApi, decode_request_body, decode_response_body
from .connection import KafkaConnection, KafkaPair, KafkaStreamDecoder
from .frames import NEED_DATA, Frame, FrameLost, FrameSplitter
from .primitives import DecodeError
from .records import RecordBatch

__all__ = [
    "SUPPORTED", "UnsupportedApi", "decode_request_body", "decode_response_body", "KafkaConnection",
    "KafkaPair", "KafkaStreamDecoder", "NEED_DATA", "Frame", "FrameLost", "FrameSplitter", "DecodeError",
    "RecordBatch",
]
