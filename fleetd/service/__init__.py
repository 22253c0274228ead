"""Service unit files: render and install the systemd user unit / launchd agent."""
