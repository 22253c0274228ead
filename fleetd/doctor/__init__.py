"""`fleetd doctor`: what would stop a run, each finding with its fix (checks.py judges; facts.py and
service.py gather)."""
