"""The fleetd daemon: lifecycle, socket API, wiring."""
