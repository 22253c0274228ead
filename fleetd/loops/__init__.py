"""Loops: the model, schedule parsing and planning, the scheduler and run execution."""
