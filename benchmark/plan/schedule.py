"""Wall time of a suite's DAG on COUNT devices: the critical path (the longest dependency chain, the
wall time with unlimited devices) and a list-scheduled makespan (Graham's list scheduling with
critical-path priority: whenever devices are free, start the ready job with the longest remaining
chain that fits). Jobs are each run's train, sample and evaluate steps; a student's training waits
for its teacher's, sampling for training, evaluation for sampling (rules/*.smk)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from benchmark.errors import ConfigError


@dataclass(frozen=True)
class Job:
    name: str
    hours: float  # wall hours on its `devices`
    devices: int
    after: tuple[str, ...] = ()


@dataclass
class Schedule:
    critical_path_hours: float
    critical_path: list[str]
    makespan_hours: float
    starts: dict[str, float] = field(default_factory=dict)


def _order(jobs: dict[str, Job]) -> list[str]:
    """Jobs with every dependency before them (the DAG has no cycles: expand.topo_order refuses teacher cycles)."""
    from benchmark.expand import dependency_order

    return dependency_order({n: j.after for n, j in jobs.items()}, "job")


def tail_lengths(jobs: dict[str, Job]) -> dict[str, float]:
    """Longest chain (hours) from the start of each job to the end of the DAG, itself included."""
    children: dict[str, list[str]] = {n: [] for n in jobs}
    for n, j in jobs.items():
        for d in j.after:
            children[d].append(n)
    tail: dict[str, float] = {}
    for n in reversed(_order(jobs)):
        tail[n] = jobs[n].hours + max((tail[c] for c in children[n]), default=0.0)
    return tail


def critical_path(jobs: dict[str, Job]) -> tuple[float, list[str]]:
    """(hours, job names) of the longest dependency chain."""
    best: dict[str, tuple[float, list[str]]] = {}
    for n in _order(jobs):
        before = max((best[d] for d in jobs[n].after), key=lambda x: x[0], default=(0.0, []))
        best[n] = (before[0] + jobs[n].hours, [*before[1], n])
    return max(best.values(), key=lambda x: x[0], default=(0.0, []))


def list_schedule(jobs: dict[str, Job], devices: int) -> tuple[float, dict[str, float]]:
    """(makespan hours, start hour of each job) on `devices` identical devices."""
    for j in jobs.values():
        if j.devices > devices:
            raise ConfigError(f"job {j.name} needs {j.devices} devices but the plan has {devices}",
                              f"plan with --hardware NAME:{j.devices} or more (or lower resources.<stage>.gpus)")
    tail = tail_lengths(jobs)
    waiting = {n: set(j.after) for n, j in jobs.items()}
    ready = sorted((n for n, w in waiting.items() if not w), key=lambda n: -tail[n])
    running: list[tuple[float, str]] = []
    free, now, starts = devices, 0.0, {}
    while ready or running:
        for n in list(ready):  # highest priority first; a smaller job may start beside a large one
            if jobs[n].devices <= free:
                ready.remove(n)
                starts[n] = now
                free -= jobs[n].devices
                heapq.heappush(running, (now + jobs[n].hours, n))
        end, n = heapq.heappop(running)
        now, free = end, free + jobs[n].devices
        for m, w in waiting.items():
            if n in w:
                w.discard(n)
                if not w and m not in starts:
                    ready.append(m)
        ready.sort(key=lambda m: -tail[m])
    return now, starts


def schedule(jobs: dict[str, Job], devices: int) -> Schedule:
    hours, path = critical_path(jobs)
    makespan, starts = list_schedule(jobs, devices)
    return Schedule(hours, path, makespan, starts)
