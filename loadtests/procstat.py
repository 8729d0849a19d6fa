"""/proc readers: CPU time and memory of a process and its descendants (Linux only).

A multi-worker gateway is a parent plus forked workers, so every number here is
taken over the process tree rooted at the pid we started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we were scanning
        # comm (field 2) may contain spaces and parens: split after the LAST ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (root first)."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in parents:
            tree.append(pid)
            stack.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process in seconds (0.0 if it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    # fields[0] is state (field 3), so utime (field 14) is fields[11], stime fields[12].
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...); 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class MemorySnapshot:
    """RSS of a process tree: total, and the largest single process (per-worker figure)."""

    pids: int
    rss_total_mb: float
    rss_max_mb: float
    hwm_total_mb: float
    hwm_max_mb: float

    def as_dict(self) -> dict[str, float]:
        return {
            "pids": self.pids,
            "rss_total_mb": round(self.rss_total_mb, 1),
            "rss_max_mb": round(self.rss_max_mb, 1),
            "peak_rss_total_mb": round(self.hwm_total_mb, 1),
            "peak_rss_max_mb": round(self.hwm_max_mb, 1),
        }


def memory(root: int) -> MemorySnapshot:
    pids = process_tree(root)
    rss = [status_kib(p, "VmRSS") / 1024 for p in pids] or [0.0]
    hwm = [status_kib(p, "VmHWM") / 1024 for p in pids] or [0.0]
    return MemorySnapshot(len(pids), sum(rss), max(rss), sum(hwm), max(hwm))


def cpu_jiffies() -> dict[str, tuple[int, int, int]]:
    """Per-CPU (busy, total, steal) jiffies from /proc/stat, keyed "0", "1", ...

    Busy excludes idle and iowait. Steal is time the hypervisor gave our vCPU to someone else."""
    out: dict[str, tuple[int, int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            v = [int(x) for x in values[:8]] + [0] * max(0, 8 - len(values))
            total = sum(v[:8])  # guest time is already inside user
            out[name[3:]] = (total - v[3] - v[4], total, v[7])
    return out


def cpu_busy_between(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> dict[str, dict[str, float]]:
    """Fraction of each CPU that was busy, and stolen, between two cpu_jiffies() snapshots."""
    result = {}
    for cpu, (busy1, total1, steal1) in after.items():
        busy0, total0, steal0 = before.get(cpu, (0, 0, 0))
        span = max(1, total1 - total0)
        result[cpu] = {"busy": round((busy1 - busy0) / span, 3), "steal": round((steal1 - steal0) / span, 3)}
    return result
