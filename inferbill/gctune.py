"""The garbage collector's settings for the serving processes."""

from __future__ import annotations

import gc


def gc_tune() -> None:
    """Keep Python's cyclic garbage collector off the ingest path's back.

    A batch of 1,000 events allocates tens of thousands of container objects, which
    set off collections that traverse the whole heap (Django, every loaded module):
    perf put 14% of a worker's CPU in the collector during the ingest benchmark.
    What is loaded by now lives as long as the process, so it is frozen out of
    collections (gc.freeze, done before gunicorn forks, also keeps those pages
    shared with the workers), and the youngest generation is collected less often.
    Nothing on the ingest path makes reference cycles; the collector still runs."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_GENERATION_THRESHOLD, second, third)


GC_FIRST_GENERATION_THRESHOLD = 50_000
