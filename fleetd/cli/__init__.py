"""The `fleetd` command. Talks to the daemon over its Unix socket; imports nothing daemon-side."""
