"""The run status vocabulary, said once: the records, the store's queries, the API's validation, the
CLI's help and the stats all read it from here.

A leaf even among the records (only `typing`): the CLI imports it for its help text without paying
for anything else.
"""

from __future__ import annotations

from typing import Literal

RunStatus = Literal["running", "waiting", "succeeded", "failed", "timed_out", "interrupted", "cancelled", "skipped"]
# Still going: a run in one of these has an executor slot (or a dead daemon's row, recovered at start).
ACTIVE_STATUSES = ("running", "waiting")
# Started and ended: these count in `fleetd stats` (only `succeeded` as a success).
ENDED_STATUSES = ("succeeded", "failed", "timed_out", "interrupted", "cancelled")
# Final: nothing changes a run in one of these. `skipped` never started.
FINAL_STATUSES = (*ENDED_STATUSES, "skipped")
STATUSES = (*ACTIVE_STATUSES, *FINAL_STATUSES)
