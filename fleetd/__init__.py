"""fleetd: a persistent local daemon that runs coding-agent loops unattended."""

__version__ = "0.1.0"
