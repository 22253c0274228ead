"""Backend adapters and their output parsers."""
