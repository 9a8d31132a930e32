"""Write a finished sweep of the ledger as a compact table file that replays read.

    ORCH_HOME=HOME python benchmarks/record_table.py tiny_grid benchmarks/tables/tiny_grid.json

The table keeps each trial's point, state, final and best metrics and its validation curve
(step, val_loss, val_bpb), with the sweep's spec and the commands that made it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.launch.replay import from_ledger, to_table
from orchestrator.ledger import Ledger, orch_home

METRICS = ["val_loss", "val_bpb"]


def main(sweep: str, out: Path) -> None:
    """Read `sweep` from the ledger at ORCH_HOME and write its table to `out`."""
    ledger = Ledger(orch_home())
    row = ledger.sweep(sweep)
    if row is None:
        sys.exit(f"no sweep {sweep!r} in the ledger at {orch_home()}")
    recorded = from_ledger(ledger, sweep)
    meta = {"sweep": sweep, "spec": row["spec"],
            "commands": [f"orch sweep benchmarks/tables/{sweep}.yaml --data hacker_news.csv",
                         f"python benchmarks/record_table.py {sweep} {out.name}"]}
    out.write_text(json.dumps(to_table(recorded, METRICS, meta), separators=(",", ":")) + "\n")
    print(f"{out}: {len(recorded)} trials")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
