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

A size or free-space limit that deleting every deletable recording could not
meet deletes nothing at all, for that limit: the usual cause is the PBX's own
recordings in the same monitor folder, or another program filling the disk.
Deleting ours anyway would not meet the limit, and would go on every round:
each new recording deleted minutes after its call, for ever, while the folder
or the disk stays over. Partial progress toward free space was weighed and
refused too: what ours would give back is at most their total, a few hours'
reprieve for a disk someone else fills, bought with every recording. The plan
says the limit is unmet and why, and the admin fixes the real cause. The age
limit is unaffected (it deletes what is past it whatever the others say).
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
    # What deleting every recording that may go would give back: a limit it
    # cannot meet deletes nothing (module docstring).
    deletable = sum(r.size for i, r in enumerate(recordings) if protection[i] is None)
    max_bytes, min_free = policy.max_bytes, policy.min_free_bytes
    size_reachable = max_bytes is not None and folder_bytes - deletable <= max_bytes
    free_reachable = min_free is not None and free_bytes + deletable >= min_free

    def pressure() -> list[str]:
        reasons = []
        if size_reachable and max_bytes is not None and folder > max_bytes:
            reasons.append(f"folder over {format_bytes(max_bytes)}")
        if free_reachable and min_free is not None and free < min_free:
            reasons.append(f"less than {format_bytes(min_free)} free")
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

    if (max_bytes is not None and not size_reachable) or (
            min_free is not None and not free_reachable):
        # An unmet limit wants every recording: the protected ones are kept from it.
        kept.update((i, why) for i, why in enumerate(protection) if why is not None)
    unmet = _unmet(policy, kept, kept_old, folder, free, foreign,
                   floor=folder_bytes - deletable, deletable=deletable)
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
           folder: int, free: int, foreign: int, *, floor: int, deletable: int) -> list[str]:
    """One sentence per limit not met. `floor`: the folder with every deletable
    recording gone; `deletable`: their bytes. A size or free-space limit is only
    ever unmet when even those could not meet it (then nothing went for it)."""
    also = (f"; kept: {len(kept)} ({_kept_why(kept, policy.settle_seconds)})"
            if kept else "")
    unmet = []
    if kept_old:
        was = "was" if len(kept_old) == 1 else "were"
        unmet.append(f"{plural(len(kept_old), 'recording')} older than"
                     f" {policy.max_age_days:g} days {was} kept"
                     f" ({_kept_why(kept_old, policy.settle_seconds)})")
    if policy.max_bytes is not None and folder > policy.max_bytes:
        if foreign > policy.max_bytes:
            why = (f"other files alone take {format_bytes(foreign)}, which ctrackd never"
                   " deletes")
        else:
            why = (f"with every recording that may go deleted it would still hold"
                   f" {format_bytes(floor)}"
                   + (f" ({format_bytes(foreign)} of it other files)" if foreign else ""))
        unmet.append(f"the folder stays over {format_bytes(policy.max_bytes)}"
                     f" ({format_bytes(folder)} after this run): {why}, so no recording"
                     f" was deleted for this limit{also}")
    if policy.min_free_bytes is not None and free < policy.min_free_bytes:
        unmet.append(f"less than {format_bytes(policy.min_free_bytes)} stays free"
                     f" ({format_bytes(free)} after this run): deleting every recording"
                     f" that may go would free only {format_bytes(deletable)}, so none was"
                     f" deleted for this limit (other files fill the disk){also}")
    return unmet


def _kept_why(kept: dict[int, str], settle: float) -> str:
    """`call in progress`, `calls in progress`, `1 call in progress, 2 modified in the
    last 300 s`: the part in brackets after a count of kept recordings."""
    in_progress = sum(1 for why in kept.values() if why == "call in progress")
    fresh = len(kept) - in_progress
    if not fresh:
        return "call in progress" if in_progress == 1 else "calls in progress"
    written = f"modified in the last {settle:g} s"
    if not in_progress:
        return written
    return f"{plural(in_progress, 'call')} in progress, {fresh} {written}"


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
