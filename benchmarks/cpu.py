"""CPU seconds the benchmarks charge to the processes they measure."""
from __future__ import annotations

import subprocess

import psutil


def postgres_cpu() -> float:
    """User + system seconds of every live postgres process on this machine (the server is
    the bench's own while it runs; a backend that exits takes its share with it)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return total


def processes_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system seconds of the daemons the bench started."""
    total = 0.0
    for p in procs:
        try:
            t = psutil.Process(p.pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
