"""The local gateway: a provider-compatible endpoint (chat, messages, responses) over routes of profiles,
driving the router as a second caller beside the loops."""
