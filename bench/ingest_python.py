"""The Python side of the ingest hot path, stage by stage, without HTTP or a database.

    .venv/bin/python bench/ingest_python.py [--batches 3] [--rounds 6] [--stage all]

Stages, over the same realistic batches of 1,000 events as bench/ingest.py:

  decode  msgspec's typed decode of a request body (services._decode_native)
  norm    decode, then validate and normalise each event (normalize.native_event_fast)
  rows    de-duplicate, hash and build the COPY text (metering.ingest), on events
          normalised beforehand
  all     norm and rows together: what a batch costs in Python before the database

Prints the CPU time per 1,000 events (best of --rounds passes; the machine's speed
varies from run to run, so compare runs made side by side), then one JSON object.

Instruction counts do not vary with the machine's speed. For those, run the stage under
callgrind twice, with --rounds 0 and with --rounds N, and divide the difference of the
"Collected" totals by N x --batches: instructions per 1,000 events (how the figures in
the README were made):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/ingest_python.py --stage rows --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta

from _common import ROOT

sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferbill.settings")

import django

django.setup()

from ingest import EventFactory, encode_json  # noqa: E402

from metering import ingest, normalize, services  # noqa: E402

BATCH_SIZE = 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=3, help="distinct bodies")
    parser.add_argument("--rounds", type=int, default=6, help="passes over the bodies")
    parser.add_argument("--stage", choices=["decode", "norm", "rows", "all"], default="all")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    factory = EventFactory(seed=args.seed, customers=2_000, now=datetime.now(UTC))
    bodies = [
        encode_json([factory.event(f"e{b}-{i}") for i in range(BATCH_SIZE)])
        for b in range(args.batches)
    ]
    limits = normalize.Limits(
        received_at=datetime.now(UTC), max_age=timedelta(days=35), max_future=timedelta(minutes=5)
    )

    def normalised(body: bytes) -> list[normalize.NormalizedEvent]:
        events = []
        for item in services._decode_native(body) or []:
            event, _ = normalize.native_event_fast(item, limits=limits)
            if event is not None:
                events.append(event)
        return events

    prepared = [normalised(body) for body in bodies]

    def rows(events: list[normalize.NormalizedEvent]) -> None:
        built = ingest.events_rows(events, source_id=1, result=ingest.IngestResult())
        ingest._copy_text(built, batch_id=1, source_id=1)

    stages = {
        "decode": lambda k: services._decode_native(bodies[k]),
        "norm": lambda k: normalised(bodies[k]),
        "rows": lambda k: rows(prepared[k]),
        "all": lambda k: rows(normalised(bodies[k])),
    }
    work = stages[args.stage]
    best = float("inf")
    for _ in range(args.rounds):
        started = time.process_time()
        for k in range(args.batches):
            work(k)
        best = min(best, (time.process_time() - started) / args.batches)
    if args.rounds:
        print(f"{args.stage}: {best * 1000:.2f} ms of CPU per {BATCH_SIZE:,} events")
    result = {"stage": args.stage, "cpu_ms_per_1000_events": round(best * 1000, 2)}
    print(json.dumps(result if args.rounds else {"stage": args.stage, "rounds": 0}))


if __name__ == "__main__":
    main()
