"""The daemon's start-up heap is frozen: full collections under load no longer walk it (the p99 tail)."""

from __future__ import annotations

import gc

from fleetd.daemon import main


def test_what_start_up_made_is_no_longer_walked_by_the_collector() -> None:
    made = [{"loop": i} for i in range(100)]  # long-lived, like the loops' definitions and the app
    assert any(o is made for o in gc.get_objects())
    frozen_before = gc.get_freeze_count()
    try:
        main._freeze_start_up()
        assert gc.get_freeze_count() > frozen_before
        assert not any(o is made for o in gc.get_objects())  # the permanent generation is not collected
        later = [{"run": 1}]  # what the daemon makes afterwards is collected as before
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
