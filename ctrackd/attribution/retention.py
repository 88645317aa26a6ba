"""Recording retention: which recordings to delete, oldest first, and why.

Pure: the adapter (`ctrackd/recordings.py`) stats the files, measures the
folder and the disk, and passes the figures and `now` in; this module only
decides. Three limits, each optional: an age, a size for the whole folder,
and a floor of free space on its disk. Age deletes every recording past it;
size and free space delete the oldest recordings until the limit is met.

What is never deleted, whatever the limits say:
- a recording of a call still in progress (`ended_at` is None);
- a file modified in the last `settle_seconds` (MixMonitor may still be
  writing it for a moment after the record has closed);
- anything that is not a ctrackd recording: the monitor folder is
  Asterisk's and may hold other tools' files. Those count toward the folder's
  size (they take the space) but are never passed in, so never chosen.
When a limit cannot be met because of these, the plan says so and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DAY = 86400.0
#: a file modified this recently may still be written to (MixMonitor flushes after hang-up)
SETTLE_SECONDS = 300.0
# Reasons recorded for a file that was not there to delete: an answered call's
# recording that something else removed, or a call never answered (MixMonitor
# records only the bridged part, option b, and may leave no file at all).
MISSING = "missing"
NOT_RECORDED = "not recorded (never answered)"


@dataclass(frozen=True, slots=True)
class Recording:
    """A ctrackd recording found on disk, with its call's times."""

    call_id: str
    path: str
    size: int               # bytes
    started_at: float       # the call's start, epoch seconds: what "older than" measures
    ended_at: float | None  # None: the call is still in progress
    mtime: float            # the file's last modification, epoch seconds


@dataclass(frozen=True, slots=True)
class Policy:
    max_age_days: float | None = None
    max_bytes: int | None = None
    min_free_bytes: int | None = None
    settle_seconds: float = SETTLE_SECONDS

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.max_age_days, self.max_bytes,
                                           self.min_free_bytes))


@dataclass(frozen=True, slots=True)
class Deletion:
    recording: Recording
    reason: str             # "older than 180 days", "folder over 50.0 GiB", ...


@dataclass(frozen=True, slots=True)
class Kept:
    """A recording a limit wanted gone but that is protected."""

    recording: Recording
    why: str                # "call in progress", "written 42 s ago"


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    deletions: tuple[Deletion, ...]
    kept: tuple[Kept, ...]
    folder_bytes: int            # before: every file of the folder, ours or not
    foreign_bytes: int           # of which not ctrackd recordings (never deleted)
    free_bytes: int              # before
    unmet: tuple[str, ...]       # one sentence per limit that could not be met

    @property
    def bytes_to_free(self) -> int:
        return sum(d.recording.size for d in self.deletions)


def plan_retention(recordings: Sequence[Recording], *, folder_bytes: int, free_bytes: int,
                   policy: Policy, now: float) -> RetentionPlan:
    """The recordings to delete, oldest first, each with its reason.

    `recordings`: the ctrackd recordings on disk, oldest call first (the
    caller sorts; ties keep their order). `folder_bytes`: the folder's total,
    other files included. `free_bytes`: free space on its disk now. Freeing a
    file is assumed to give back its size on both counts.
    """
    ours = sum(r.size for r in recordings)
    foreign = max(0, folder_bytes - ours)
    chosen: dict[int, str] = {}   # index in `recordings` -> reason
    kept: dict[int, str] = {}     # index -> why it is protected
    kept_old: dict[int, str] = {}  # the protected ones past the age limit
    protection = [_protection(r, policy, now) for r in recordings]

    if policy.max_age_days is not None:
        cutoff = now - policy.max_age_days * DAY
        reason = f"older than {policy.max_age_days:g} days"
        for i, r in enumerate(recordings):
            if r.started_at < cutoff:
                if protection[i] is None:
                    chosen[i] = reason
                else:
                    kept[i] = kept_old[i] = protection[i]

    folder = folder_bytes - sum(recordings[i].size for i in chosen)
    free = free_bytes + sum(recordings[i].size for i in chosen)

    def pressure() -> list[str]:
        reasons = []
        if policy.max_bytes is not None and folder > policy.max_bytes:
            reasons.append(f"folder over {format_bytes(policy.max_bytes)}")
        if policy.min_free_bytes is not None and free < policy.min_free_bytes:
            reasons.append(f"less than {format_bytes(policy.min_free_bytes)} free")
        return reasons

    for i, r in enumerate(recordings):
        reasons = pressure()
        if not reasons:
            break
        if i in chosen:
            continue
        if protection[i] is not None:
            kept[i] = protection[i]
            continue
        chosen[i] = ", ".join(reasons)
        folder -= r.size
        free += r.size

    unmet = _unmet(policy, kept, kept_old, folder, free, foreign)
    return RetentionPlan(
        deletions=tuple(Deletion(recordings[i], chosen[i]) for i in sorted(chosen)),
        kept=tuple(Kept(recordings[i], kept[i]) for i in sorted(kept)),
        folder_bytes=folder_bytes, foreign_bytes=foreign, free_bytes=free_bytes,
        unmet=tuple(unmet))


def _protection(r: Recording, policy: Policy, now: float) -> str | None:
    """Why this recording may not be deleted now, or None."""
    if r.ended_at is None:
        return "call in progress"
    age = now - r.mtime
    if age < policy.settle_seconds:  # a clock step can put mtime ahead: protected too
        return f"written {max(0, int(age))} s ago"
    return None


def _unmet(policy: Policy, kept: dict[int, str], kept_old: dict[int, str],
           folder: int, free: int, foreign: int) -> list[str]:
    protected = _count_kept(kept, policy.settle_seconds)
    also = f"; kept: {protected}" if protected else ""
    unmet = []
    if kept_old:
        unmet.append(f"{plural(len(kept_old), 'recording')} older than"
                     f" {policy.max_age_days:g} days"
                     f" were kept: {_count_kept(kept_old, policy.settle_seconds)}")
    if policy.max_bytes is not None and folder > policy.max_bytes:
        others = (f"{format_bytes(foreign)} of it are other files, which ctrackd never"
                  " deletes" if foreign else "no other ctrackd recording may go")
        unmet.append(f"the folder stays over {format_bytes(policy.max_bytes)}"
                     f" ({format_bytes(folder)} after this run): {others}{also}")
    if policy.min_free_bytes is not None and free < policy.min_free_bytes:
        unmet.append(f"less than {format_bytes(policy.min_free_bytes)} stays free"
                     f" ({format_bytes(free)} after this run): no other ctrackd recording"
                     f" may go{also}")
    return unmet


def _count_kept(kept: dict[int, str], settle: float) -> str:
    in_progress = sum(1 for why in kept.values() if why == "call in progress")
    fresh = len(kept) - in_progress
    parts = []
    if in_progress:
        parts.append(f"{in_progress} of calls in progress")
    if fresh:
        parts.append(f"{fresh} modified in the last {settle:g} s")
    return ", ".join(parts)


def plural(count: int, noun: str) -> str:
    """`1 recording`, `3 recordings`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_bytes(n: float) -> str:
    """`50.0 GiB`, `512.0 MiB`, `800 B`: binary units, as the config's sizes are."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
