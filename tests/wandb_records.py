"""Read an offline W&B run back: the records of its `run-ID.wandb` file, with wandb's protobuf.

wandb 0.31 ships no Python reader of this file (its writer is the Go core), so this is the
file's framing as the core writes it, decoded with wandb's own `Record` message:
a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then LevelDB log framing in 32 KiB blocks:
each chunk is crc32c (4) + length (2, LE) + type (1: full, 2: first, 3: middle, 4: last).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list[pb.Record]:
    """Every record of a .wandb file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return [pb.Record.FromString(r) for r in records]


def offline_run(records: list[pb.Record]) -> dict[str, Any]:
    """What the run logged: run id and sweep, config, summary, history rows and exit code."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "exit_code": None}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["sweep_id"] = rec.run.run_id, rec.run.sweep_id
            out["project"] = rec.run.project
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(
                    item.value_json)
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def fragment_node(run: dict[str, Any], state: str, created_at: str,
                  heartbeat_at: str) -> dict[str, Any]:
    """An offline run as the public API's GraphQL returns it: the fields of `RUN_FRAGMENT`
    (wandb/apis/public/runs.py), config in the server's {key: {desc, value}} form and config /
    summaryMetrics / systemMetrics as JSON strings, as `Run._load_from_attrs` expects them.
    `id` (a storage id), `displayName` and `user` are placeholders; the rest is what was logged.
    """
    config = {k: {"desc": None, "value": v} for k, v in run["config"].items()}
    keys = sorted({k for row in run["history"] for k in row})
    return {
        "id": f"placeholder-storage-id-{run['run_id']}", "tags": [], "name": run["run_id"],
        "displayName": f"run-{run['run_id']}", "sweepName": run["sweep_id"], "state": state,
        "config": json.dumps(config), "group": None, "jobType": None, "commit": None,
        "readOnly": False, "createdAt": created_at, "heartbeatAt": heartbeat_at,
        "description": None, "notes": None, "systemMetrics": "{}",
        "summaryMetrics": json.dumps(run["summary"]), "historyLineCount": len(run["history"]),
        "user": {"name": "placeholder", "username": "placeholder"},
        "historyKeys": {"keys": {k: {} for k in keys}, "lastStep": run["summary"].get("_step")},
        "projectId": "1",
    }
