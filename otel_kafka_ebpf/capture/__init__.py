"""Capture stage: kernel events -> per-connection ordered byte streams with explicit gaps."""
