"""How many CPUs this process can keep busy: a hint for how the engine schedules its work.

Two limits apply on Linux: the CPU affinity (``taskset``, ``os.sched_setaffinity``) and a
cgroup CPU quota (a container's ``--cpus``, systemd's ``CPUQuota=``), which leaves every
CPU usable but only so much time on them. Reading either can fail (another platform, an
unusual mount); the answer is then what the affinity or ``os.cpu_count`` says.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus() -> int:
    """The calling thread's CPU affinity, capped by a cgroup CPU quota rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def cpu_quota() -> float | None:
    """CPUs' worth of time the tightest cgroup CPU quota on this process's cgroup path (up
    to the root of each mounted hierarchy) allows, or None if there is none to read."""
    try:
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for version, root, top in cpu_hierarchies():
        for membership in memberships:
            parts = membership.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            # v2 lists one unified hierarchy with no controllers named; v1 one line per hierarchy
            if not (controllers == "" if version == 2 else "cpu" in controllers.split(",")):
                continue
            # Inside a container the hierarchy is often mounted at its own cgroup: "/" here.
            inside = path[len(root):] if path.startswith(root) else ""
            directory = top / inside.lstrip("/")
            while True:
                quota = _quota_in(directory, version)
                if quota is not None:
                    quotas.append(quota)
                if directory == top or top not in directory.parents:
                    break
                directory = directory.parent
    return min(quotas, default=None)


def cpu_hierarchies() -> list[tuple[int, str, Path]]:
    """The mounted cgroup hierarchies that may hold a CPU quota: (cgroup version, the cgroup
    mounted, where), from /proc/self/mountinfo; none where that cannot be read."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for mount in mounts:
        fields = mount.split()
        try:
            after = fields.index("-")  # optional fields come before the separator
            root, point, kind, options = fields[3], fields[4], fields[after + 1], fields[after + 3]
        except (ValueError, IndexError):
            continue
        if kind == "cgroup2":
            found.append((2, root, Path(point)))
        elif kind == "cgroup" and "cpu" in options.split(","):
            found.append((1, root, Path(point)))
    return found


def _quota_in(directory: Path, version: int) -> float | None:
    try:
        if version == 2:
            limit, period = (directory / "cpu.max").read_text().split()
            return None if limit == "max" else int(limit) / int(period)
        microseconds = int((directory / "cpu.cfs_quota_us").read_text())
        return None if microseconds < 0 else microseconds / int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):  # no such file here, or not what a kernel writes
        return None
