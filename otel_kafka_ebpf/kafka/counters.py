"""Every counter the decoder keeps in its `stats`, by name, and which of them are problems.

The decoder counts under these names only; readers (the agent's `otel_kafka_ebpf.decoder.problems`, `trace
--stats`) read them back by name. The compiled core (native/src/lib.rs) counts under some of the same names, as
literals: tests/unit/kafka/test_counters.py holds it to this table.

Problems are frames (or responses) the decoder could not use; the rest count what went as it should, or bytes.
"""

from __future__ import annotations

from .versions import API_TABLE

# --- one name each ------------------------------------------------------------------------------------------------
SKIPPED_ON_PURPOSE_BYTES = "skipped_on_purpose_bytes"  # left in the kernel on purpose (records, SASL): no loss
GAP_BYTES = "gap_bytes"                                # lost: never captured
SASL_TOKENS = "sasl_tokens"                            # raw SASL frames, never copied
HEADS_ONLY_REQUESTS = "heads_only_requests"            # the fallback program copied their heads only
HEADS_ONLY_RESPONSES = "heads_only_responses"
MALFORMED_REQUEST_HEADERS = "malformed_request_headers"    # not a request header: the frame boundary was wrong
MALFORMED_RESPONSE_HEADERS = "malformed_response_headers"  # shorter than a correlation id
TRUNCATED_REQUESTS = "truncated_requests"              # cut off by a gap or by the end of the stream
TRUNCATED_RESPONSES = "truncated_responses"
PENDING_OVERFLOW = "pending_overflow"                  # more requests awaiting responses than are remembered
UNMATCHED_RESPONSES = "unmatched_responses"            # no request with the response's correlation id
LOST_RESPONSES = "lost_responses"                      # requests a later response showed to be unanswered
AMBIGUOUS_RESPONSES = "ambiguous_responses"            # a reused correlation id a gap made impossible to pair

# --- the frame splitter's own counts (kafka/frames.py FrameSplitter attributes), per direction ---------------------
SPLITTER_COUNTS = ("frames", "lost_frames", "skipped_bytes", "resyncs", "bad_sizes", "overlaps", "dropped_candidates")
# (attribute, request's name, response's name): "frames" is counted as "request_frames" and "response_frames".
# None of them is a problem: the agent has never exported one as such (request_bad_sizes included).
SPLITTER = tuple((count, f"request_{count}", f"response_{count}") for count in SPLITTER_COUNTS)
REQUEST_FRAMES, RESPONSE_FRAMES = SPLITTER[0][1], SPLITTER[0][2]


_PROBLEMS = {MALFORMED_REQUEST_HEADERS, MALFORMED_RESPONSE_HEADERS, TRUNCATED_REQUESTS, TRUNCATED_RESPONSES,
             PENDING_OVERFLOW, UNMATCHED_RESPONSES, LOST_RESPONSES, AMBIGUOUS_RESPONSES}
_NAMES = {SKIPPED_ON_PURPOSE_BYTES, GAP_BYTES, SASL_TOKENS, HEADS_ONLY_REQUESTS, HEADS_ONLY_RESPONSES, *_PROBLEMS,
          *(name for _, request, response in SPLITTER for name in (request, response))}


# --- one name per API (and version) --------------------------------------------------------------------------------
class _PerApi:
    """The counters of one kind, one per API key (and version): each name formed here, once, and registered."""

    __slots__ = ("_template", "_names", "_problem")

    def __init__(self, template: str, problem: bool, keys=()) -> None:
        self._template = template
        self._names: dict[tuple[int, ...], str] = {}
        self._problem = problem
        for key in keys:
            self(*key)

    def __call__(self, *key: int) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = self._template.format(*key)
            _NAMES.add(name)
            if self._problem:
                _PROBLEMS.add(name)
        return name


# a request (response) of a known API whose body does not decode: a problem
malformed_request_api = _PerApi("malformed_request_api_{}", True, ((key,) for key in API_TABLE))
malformed_response_api = _PerApi("malformed_response_api_{}", True, ((key,) for key in API_TABLE))
# an API version without a body decoder: its pairs are still made, without a body
unsupported_api = _PerApi("unsupported_api_{}_v{}", False)


def is_problem(name: str) -> bool:
    """Whether the counter `name` counts frames or responses the decoder could not use."""
    return name in _PROBLEMS


def is_known(name: str) -> bool:
    """Whether `name` is one of the decoder's counters (of an API: one formed by this table)."""
    return name in _NAMES
