"""How the CLI shows things: tables, progress bars, instances, durations."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def progress_bar(fraction: float, width: int = 30) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


def show_instance(inst: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(inst, indent=2))
        return
    print(f"instance {inst['id']}  {inst['job']} v{inst['version']}  {inst['status']}  "
          f"{progress_bar(inst['progress'])}")
    print(_times(inst))
    if inst.get("schedule_id"):
        print(f"fired by schedule {inst['schedule_id']} (occurrence {inst.get('scheduled_for')})")
    if inst.get("chunks_per_second"):
        eta = inst.get("eta_seconds")
        print(f"rate {inst['chunks_per_second']:.1f} chunks/s" + (f", eta {eta:.0f}s" if eta else ""))
    if inst.get("cancel_reason"):
        print(f"cancelled: {inst['cancel_reason']}")
    if inst.get("error_message"):
        print(f"error ({inst['error_count']} step errors): {inst['error_message']}")
    elif inst.get("reduction_attempts"):
        print(f"reduction retrying after {inst['reduction_attempts']} failed attempt(s): {inst.get('last_error')}")
    if inst.get("steps"):
        print(table([{**s, "states": states(s["states"])} for s in inst["steps"]],
                    ["index", "name", "created", "completed", "failed", "cancelled", "errors", "states"]))
    if inst.get("report") is not None:
        print("report: " + json.dumps(inst["report"]))
    for w in inst.get("warnings") or []:
        print(f"warning: {w}")


# Chunk state IN_PROGRESS means claimed (leased to a daemon: queued there or running), not
# running: shown as CLAIMED so that it is not read as "steps running" (chunkd_steps_running is).
_SHOWN_STATE = {"IN_PROGRESS": "CLAIMED"}


def states(by_state: dict[str, int]) -> str:
    return " ".join(f"{_SHOWN_STATE.get(k, k)}={v}" for k, v in by_state.items())


def _times(inst: dict[str, Any]) -> str:
    def at(v: str | None) -> datetime | None:
        return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
    created, started, ended = at(inst.get("created_at")), at(inst.get("started_at")), at(inst.get("finished_at"))
    parts = [f"created {inst.get('created_at')}", f"started {inst.get('started_at') or '-'}",
             f"ended {inst.get('finished_at') or '-'}"]
    began = started or created
    if began is not None:
        secs = ((ended or datetime.now(timezone.utc)) - began).total_seconds()
        parts.append(("duration " if ended else "running for ") + _duration(secs))
    return "  ".join(parts)


def _duration(secs: float) -> str:
    s = int(round(secs))
    if s < 60:
        return f"{secs:.1f}s"
    h, rest = divmod(s, 3600)
    return (f"{h}h" if h else "") + f"{rest // 60}m{rest % 60:02d}s"
