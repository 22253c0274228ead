"""Routing: which profile an attempt uses, and what a failed attempt means. Pure: no I/O."""
