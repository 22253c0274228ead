"""Heartbeat: usage windows, the agents' own usage records, headroom, auto-switching."""
