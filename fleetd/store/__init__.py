"""SQLite persistence: schema, migrations and every query fleetd makes."""
