"""Hooks: tell a command (`--exec`) or a URL (`--webhook`) about the events in the event log.

`model` validates input into a `records.hook.Hook`; `deliver` performs one delivery (the retry policy
is a pure function there); `dispatch` follows the event log and feeds each hook's bounded queue;
`service` is what the API calls.
"""
