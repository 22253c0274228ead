"""Plain records: the data every part of fleetd passes around and the store persists.

Invariant: a leaf. Modules here import only the standard library, `fleetd.errors`, `fleetd.timefmt`
and each other (tests/test_structure.py keeps it true), so the store and the pure decision code can
build on them without pulling in anything that does I/O or decides.
"""
