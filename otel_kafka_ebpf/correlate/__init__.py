"""Joins across connections and processes: topic names, fetch sessions, consumer groups, lag."""

from .topics import TopicRegistry

__all__ = ["TopicRegistry"]
