"""Recording retention: the planner (tables of cases), then `ctrackd recordings prune` on a
real store and real files, then the daemon's schedule.

Times are relative to the test's start; file ages are set with os.utime.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ctrackd import cli
from ctrackd.attribution.records import Attribution, CallProgress, CallStatus, Tracking
from ctrackd.attribution.retention import (DAY, MISSING, NOT_RECORDED, Policy, Recording,
                                           format_bytes, plan_retention)
from ctrackd.config import RecordingsConfig, load_config
from ctrackd.configcalls import RetentionConfig
from ctrackd.daemon import Daemon
from ctrackd.recordings import prune, relative_path
from ctrackd.retention_task import RetentionTask
from ctrackd.store import queries, schema
from ctrackd.store.recordings import deleted_marks, mark_deleted
from tests.simulator.ami_server import FakeAmi

NOW = time.time()
GiB = 1024 ** 3

# -- the planner ---------------------------------------------------------------------


def rec(call_id: str, *, days: float, size: int = 100, ended: bool = True,
        written: float | None = None) -> Recording:
    """A recording of a call started `days` ago, its file last written `written` s ago."""
    started = NOW - days * DAY
    return Recording(call_id, f"/mon/ctrackd-{call_id}.wav", size, started,
                     started + 60 if ended else None,
                     NOW - written if written is not None else started + 60)


OLD_TO_NEW = [rec("a", days=200), rec("b", days=100), rec("c", days=10), rec("d", days=1)]

PLANS: list[tuple[str, list[Recording], dict[str, Any], list[tuple[str, str]], list[str]]] = [
    # (case, recordings oldest first, figures + policy, deletions, words in `unmet`)
    ("nothing configured deletes nothing", OLD_TO_NEW,
     dict(folder=400, free=10_000), [], []),
    ("age: everything past it", OLD_TO_NEW,
     dict(folder=400, free=10_000, max_age_days=90),
     [("a", "older than 90 days"), ("b", "older than 90 days")], []),
    ("size: the oldest until under the limit", OLD_TO_NEW,
     dict(folder=400, free=10_000, max_bytes=250),
     [("a", "folder over 250 B"), ("b", "folder over 250 B")], []),
    ("size exactly at the limit is fine", OLD_TO_NEW,
     dict(folder=400, free=10_000, max_bytes=400), [], []),
    ("free space: the oldest until enough is free", OLD_TO_NEW,
     dict(folder=400, free=50, min_free_bytes=200),
     [("a", "less than 200 B free"), ("b", "less than 200 B free")], []),
    ("both pressures name both reasons", OLD_TO_NEW,
     dict(folder=400, free=50, max_bytes=350, min_free_bytes=120),
     [("a", "folder over 350 B, less than 120 B free")], []),
    ("age first, then size counts what age freed", OLD_TO_NEW,
     dict(folder=400, free=10_000, max_age_days=150, max_bytes=150),
     [("a", "older than 150 days"), ("b", "folder over 150 B"), ("c", "folder over 150 B")],
     []),
    ("a call in progress is skipped, the next oldest goes",
     [rec("open", days=3, ended=False), rec("b", days=2), rec("c", days=1)],
     dict(folder=300, free=10_000, max_bytes=250), [("b", "folder over 250 B")], []),
    ("a fresh file is skipped even past the age",
     [rec("a", days=200, written=30), rec("b", days=190)],
     dict(folder=200, free=10_000, max_age_days=180),
     [("b", "older than 180 days")], ["1 recording older than 180 days", "modified in the"]),
    ("in progress past the age: kept and said",
     [rec("a", days=200, ended=False)], dict(folder=100, free=10_000, max_age_days=180), [],
     ["1 recording older than 180 days was kept (call in progress)"]),
    ("other files below the limit: ours go until it is met",
     [rec("a", days=5), rec("b", days=4), rec("c", days=3)],
     dict(folder=1000, free=10_000, max_bytes=800),
     [("a", "folder over 800 B"), ("b", "folder over 800 B")], []),
    # Deleting every recording of ours would not get there: delete none (else each new
    # recording would go minutes after its call, round after round, for nothing).
    ("other files alone over the limit: nothing deleted, said why",
     [rec("a", days=5), rec("b", days=4)], dict(folder=1000, free=10_000, max_bytes=500),
     [], ["stays over 500 B (1000 B after this run)",
          "other files alone take 800 B, which ctrackd never deletes"]),
    ("out of reach only with the protected ones: nothing deleted either",
     [rec("open", days=3, ended=False, size=200), rec("b", days=2)],
     dict(folder=300, free=10_000, max_bytes=150), [],
     ["stays over 150 B (300 B after this run)", "would still hold 200 B",
      "kept: 1 (call in progress)"]),
    ("an unreachable size limit does not stop a reachable free-space one",
     [rec("a", days=5), rec("b", days=4)],
     dict(folder=1000, free=50, max_bytes=500, min_free_bytes=120),
     [("a", "less than 120 B free")], ["other files alone take 800 B"]),
    ("a limit that only protected files could meet says so",
     [rec("a", days=2, ended=False), rec("b", days=1, written=5)],
     dict(folder=200, free=10_000, max_bytes=100), [],
     ["stays over 100 B", "kept: 2 (1 call in progress, 1 modified in the last 300 s)"]),
    ("free space that cannot be reached: nothing deleted, said why", [rec("a", days=2)],
     dict(folder=100, free=10, min_free_bytes=1000), [],
     ["less than 1000 B stays free (10 B after this run)",
      "deleting every recording that may go would free only 100 B"]),
    ("age deletes anyway when free space is out of reach",
     [rec("a", days=200), rec("b", days=2)],
     dict(folder=200, free=10, max_age_days=180, min_free_bytes=1000),
     [("a", "older than 180 days")], ["less than 1000 B stays free (110 B after this run)"]),
]


@pytest.mark.parametrize("case, recordings, figures, deletions, unmet", PLANS,
                         ids=[p[0] for p in PLANS])
def test_plan(case: str, recordings: list[Recording], figures: dict[str, Any],
              deletions: list[tuple[str, str]], unmet: list[str]) -> None:
    figures = dict(figures)
    folder, free = figures.pop("folder"), figures.pop("free")
    plan = plan_retention(recordings, folder_bytes=folder, free_bytes=free,
                          policy=Policy(**figures), now=NOW)
    assert [(d.recording.call_id, d.reason) for d in plan.deletions] == deletions
    text = " | ".join(plan.unmet)
    for words in unmet:
        assert words in text
    if not unmet:
        assert plan.unmet == ()


def test_plan_never_deletes_in_progress_or_fresh_whatever_the_limits() -> None:
    recordings = [rec(f"c{i}", days=30 - i, ended=i % 3 != 0, written=10 if i % 4 == 0 else None)
                  for i in range(20)]
    plan = plan_retention(recordings, folder_bytes=10 ** 9, free_bytes=0,
                          policy=Policy(max_age_days=1, max_bytes=1, min_free_bytes=10 ** 12),
                          now=NOW)
    gone = {d.recording.call_id for d in plan.deletions}
    assert gone == {f"c{i}" for i in range(20) if i % 3 != 0 and i % 4 != 0}
    assert {k.recording.call_id for k in plan.kept} == {f"c{i}" for i in range(20)} - gone
    assert len(plan.unmet) == 3


@pytest.mark.parametrize("n, text", [(800, "800 B"), (1536, "1.5 KiB"), (50 * GiB, "50.0 GiB"),
                                     (5 * 1024 ** 4, "5.0 TiB"), (0, "0 B")])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize("path, rel", [
    ("/mon/ctrackd-1.wav", "ctrackd-1.wav"),
    ("/mon/sub/ctrackd-1.wav", "sub/ctrackd-1.wav"),
    ("/real/ctrackd-1.wav", "ctrackd-1.wav"),         # the folder's resolved path
    ("ctrackd-1.wav", "ctrackd-1.wav"),               # written before recordings.dir was set
    ("/old/monitor/ctrackd-1.wav", None),             # an older recordings.dir
    ("/mon/../etc/passwd", None),
    ("/mon/sub/../../etc/passwd", None),
    ("/mon", None), ("/mon/", None), ("/monitor2/x.wav", None), ("", None),
])
def test_relative_path_stays_inside(path: str, rel: str | None) -> None:
    assert relative_path(path, "/mon", "/real") == rel


# -- the command on a real store and real files -------------------------------------

CONFIG = """\
ami: {{username: ctrackd, secret: s3cret}}
store: {{path: var/calls.sqlite3}}
recordings:
  dir: {folder}
{retention}
defaults: {{forward_to: PJSIP/office}}
"""


def write_config(tmp_path: Path, folder: Path, retention: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(folder=folder, retention=retention), encoding="utf-8")
    return path


def save_call(store: Path, call_id: str, *, hours_ago: float, recording: str | None,
              ended: bool = True, answered: bool = True) -> None:
    conn = queries.connect(store, readonly=False)
    schema.migrate(conn)
    started = NOW - hours_ago * 3600
    queries.save_attribution(conn, Attribution(
        call_id=call_id, started_at=started, did="+74950000001", caller="+79161234567",
        caller_name=None, tracking=Tracking.STATIC, channel="google", source="google",
        medium="cpc", campaign=None, label="Google", forward_to="PJSIP/office", ring_timeout=30,
        recording_path=recording))
    if answered:
        p = CallProgress(call_id, started, CallStatus.ANSWERED, answered_at=started + 5,
                         answered_by="PJSIP/101")
    else:
        p = CallProgress(call_id, started, CallStatus.RINGING)
    if ended:
        p.finish(CallStatus.ANSWERED if answered else CallStatus.NO_ANSWER, started + 65,
                 "hangup")
    queries.save_progress(conn, [p])
    conn.close()


def make_file(path: Path, size: int, *, hours_ago: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (NOW - hours_ago * 3600, NOW - hours_ago * 3600))
    return path


class Site:
    """A config, a monitor folder and a store with five recorded calls.

    `open` is the OLDEST call and still in progress; c1..c4 ended, oldest
    first; 1000 bytes each; `other-tool.wav` (500 bytes) belongs to no record.
    """

    def __init__(self, tmp_path: Path, retention: str = "", *, open_call: bool = True) -> None:
        self.folder = tmp_path / "monitor"
        self.store = tmp_path / "var" / "calls.sqlite3"
        self.config = write_config(tmp_path, self.folder, retention)
        self.files: dict[str, Path] = {}
        for call_id, hours in (("open", 6), ("c1", 5), ("c2", 4), ("c3", 3), ("c4", 2)):
            path = self.folder / f"ctrackd-{call_id}.wav"
            save_call(self.store, call_id, hours_ago=hours, recording=str(path),
                      ended=call_id != "open" or not open_call)
            self.files[call_id] = make_file(path, 1000, hours_ago=hours - 1)
        self.foreign = make_file(self.folder / "other-tool.wav", 500, hours_ago=48)

    def left(self) -> set[str]:
        return {name for name, path in self.files.items() if path.exists()}

    def marks(self) -> dict[str, tuple[float | None, str | None]]:
        conn = queries.connect(self.store, readonly=True)
        try:
            return deleted_marks(conn, self.files)
        finally:
            conn.close()


def run(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(words))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_size_limit_deletes_oldest_first_and_keeps_the_open_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    # 5500 bytes in the folder, at most 3000: c1, c2, c3 go; `open` is older but in progress.
    code, out, err = run(capsys, "recordings", "prune", "-c", str(site.config),
                         "--max-size", "3000B", "--format", "json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert [(f["call_id"], f["result"], f["reason"]) for f in report["files"]] == [
        ("c1", "deleted", "folder over 2.9 KiB"), ("c2", "deleted", "folder over 2.9 KiB"),
        ("c3", "deleted", "folder over 2.9 KiB")]
    assert site.left() == {"open", "c4"} and site.foreign.exists()
    assert (report["deleted"], report["bytes_freed"]) == (3, 3000)
    assert (report["would_delete"], report["bytes_would_free"]) == (0, 0)
    assert (report["folder_bytes_before"], report["folder_bytes_after"]) == (5500, 2500)
    assert report["other_files_bytes"] == 500 and report["kept"] == 1
    marks = site.marks()
    assert {k: v[1] for k, v in marks.items()} == {
        "open": None, "c1": "folder over 2.9 KiB", "c2": "folder over 2.9 KiB",
        "c3": "folder over 2.9 KiB", "c4": None}
    assert all(NOW - 5 < marks[c][0] < time.time() + 5 for c in ("c1", "c2", "c3"))

    # The records say it, in `ctrackd calls`: the path stays, the recording is gone.
    code, out, _ = run(capsys, "calls", "-c", str(site.config), "--format", "json")
    calls = {c["call_id"]: c for c in json.loads(out)}
    if "recording_deleted_reason" in queries.CALL_FIELDS:
        assert calls["c1"]["recording_deleted_reason"] == "folder over 2.9 KiB"
        assert calls["c1"]["recording_deleted_at"] is not None
        assert calls["c4"]["recording_deleted_at"] is None
    assert calls["c4"]["recording"] == str(site.files["c4"])

    # A second run has nothing left to do: the marked records are not walked again.
    code, out, _ = run(capsys, "recordings", "prune", "-c", str(site.config),
                       "--max-size", "3000B", "--format", "json")
    assert code == 0 and json.loads(out)["files"] == []


def test_a_size_limit_other_files_alone_exceed_deletes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The PBX's own recordings share the monitor folder and fill it past the limit."""
    site = Site(tmp_path, open_call=False)
    make_file(site.folder / "2024/01/01/q-600-123.wav", 6000, hours_ago=48)
    code, out, err = run(capsys, "recordings", "prune", "-c", str(site.config),
                         "--max-size", "5000B", "--format", "json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert site.left() == set(site.files) and report["files"] == []
    assert report["folder_bytes_after"] == report["folder_bytes_before"] == 11500
    (unmet,) = report["unmet"]
    assert "other files alone take 6.3 KiB, which ctrackd never deletes" in unmet
    assert all(mark == (None, None) for mark in site.marks().values())


def test_dry_run_deletes_and_marks_nothing(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path, "  retention: {max_age_days: 0.1}")
    os.remove(site.files["c4"])  # missing: reported, not marked in a dry run
    code, out, err = run(capsys, "recordings", "prune", "-c", str(site.config), "--dry-run")
    assert (code, err) == (0, "")
    assert site.left() == {"open", "c1", "c2", "c3"}
    assert all(mark == (None, None) for mark in site.marks().values())
    assert "dry run: would delete 3 recordings, 2.9 KiB; 1 missing file to mark" in out
    assert "would delete" in out and "older than 0.1 days" in out
    assert "ctrackd-c1.wav" in out and "other-tool.wav" not in out
    assert "(500 B other files, never deleted)" in out
    assert "limit not met: 1 recording older than 0.1 days was kept (call in progress)" in out
    code, out, err = run(capsys, "recordings", "prune", "-c", str(site.config), "--dry-run",
                         "--format", "json")
    report = json.loads(out)
    assert (report["dry_run"], report["deleted"], report["bytes_freed"]) == (True, 0, 0)
    assert (report["would_delete"], report["bytes_would_free"]) == (3, 3000)
    assert (report["folder_bytes_before"], report["folder_bytes_after"]) == (4500, 1500)
    assert {f["result"] for f in report["files"]} == {"would_delete", "missing"}


def test_config_limits_missing_files_and_table(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path, "  retention: {max_age_days: 0.1}")  # 2.4 hours: c1, c2, c3
    os.remove(site.files["c4"])
    # Never answered: MixMonitor (option b) left no file. Not `missing`: never recorded.
    save_call(site.store, "unanswered", hours_ago=1, answered=False,
              recording=str(site.folder / "ctrackd-unanswered.wav"))
    site.files["unanswered"] = site.folder / "ctrackd-unanswered.wav"
    # Ended a moment ago, no file yet: not judged missing until the settle time has passed.
    save_call(site.store, "just-ended", hours_ago=65 / 3600, answered=False,
              recording=str(site.folder / "ctrackd-just-ended.wav"))
    site.files["just-ended"] = site.folder / "ctrackd-just-ended.wav"
    code, out, err = run(capsys, "recordings", "prune", "-c", str(site.config))
    assert (code, err) == (0, "")
    assert site.left() == {"open"}
    marks = {k: v[1] for k, v in site.marks().items()}
    assert marks == {"open": None, "c1": "older than 0.1 days", "c2": "older than 0.1 days",
                     "c3": "older than 0.1 days", "c4": MISSING,
                     "unanswered": NOT_RECORDED, "just-ended": None}
    lines = out.splitlines()
    assert lines[0].split() == ["CALL", "SIZE", "RESULT", "REASON", "FILE"]
    assert [line.split()[-1] for line in lines[1:4]] == [
        "ctrackd-c1.wav", "ctrackd-c2.wav", "ctrackd-c3.wav"]
    assert lines[4] == "deleted 3 recordings, 2.9 KiB; 2 missing files marked"


def test_the_table_never_cuts_the_file_name(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The file name is the only identifier in the table: other columns give way."""
    site = Site(tmp_path, open_call=False)
    name = "ctrackd-1795342174.11.wav"
    save_call(site.store, "1795342174.11", hours_ago=7, recording=str(site.folder / name))
    make_file(site.folder / name, 1000, hours_ago=6)
    # 82 columns of content: the reason gives two, never the file name.
    code, out, err = run(capsys, "recordings", "prune", "-c", str(site.config), "--dry-run",
                         "--max-age-days", "0.01")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].split()[-1] == name and "would delete" in lines[1]
    assert all(len(line) <= 80 for line in lines[:2])


def test_records_outside_the_folder_and_symlinks_are_never_followed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    elsewhere = make_file(tmp_path / "old-monitor" / "ctrackd-x.wav", 1000, hours_ago=50)
    save_call(site.store, "x", hours_ago=50, recording=str(elsewhere))
    # A record naming a symlink in the folder that points out of it: not a file of ours.
    target = make_file(tmp_path / "precious" / "keep.wav", 1000, hours_ago=50)
    (site.folder / "ctrackd-y.wav").symlink_to(target)
    save_call(site.store, "y", hours_ago=49, recording=str(site.folder / "ctrackd-y.wav"))
    code, out, _ = run(capsys, "recordings", "prune", "-c", str(site.config),
                       "--max-age-days", "0.01", "--format", "json")
    report = json.loads(out)
    assert elsewhere.exists() and target.exists() and (site.folder / "ctrackd-y.wav").is_symlink()
    assert report["outside_folder"] == 1
    assert {f["call_id"]: f["result"] for f in report["files"]} == {
        "y": "missing", "c1": "deleted", "c2": "deleted", "c3": "deleted", "c4": "deleted"}
    assert report["folder_bytes_before"] == 5500  # the symlink counts for nothing


def test_a_folder_with_no_files_marks_nothing_missing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path)
    shutil.rmtree(site.folder)
    site.folder.mkdir()  # an empty mount point: the disk is not there
    code, _, err = run(capsys, "recordings", "prune", "-c", str(site.config),
                       "--max-age-days", "1")
    assert code == 1 and "holds no files at all" in err
    assert all(mark == (None, None) for mark in site.marks().values())


@pytest.mark.parametrize("retention, words, message", [
    ("", [], "retention is not configured in"),
    ("", ["--max-size", "lots"], "argument --max-size: expected a size with its unit"),
    ("", ["--max-age-days", "0"], "argument --max-age-days: expected a number of days"),
])
def test_bad_or_missing_settings_are_sentences(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               retention: str, words: list[str],
                                               message: str) -> None:
    site = Site(tmp_path, retention)
    code, _, err = run(capsys, "recordings", "prune", "-c", str(site.config), *words)
    assert code in (1, 2) and message in err
    assert site.left() == set(site.files)


def test_no_folder_configured_or_found(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ctrackd.yaml"
    config.write_text("ami: {username: u, secret: s}\nstore: {path: calls.sqlite3}\n"
                      "defaults: {forward_to: PJSIP/office}\n", encoding="utf-8")
    code, _, err = run(capsys, "recordings", "prune", "-c", str(config), "--max-size", "1G")
    assert code == 1 and "sets no recordings.dir" in err
    site = Site(tmp_path / "b")
    shutil.rmtree(site.folder)
    code, _, err = run(capsys, "recordings", "-c", str(site.config), "prune", "--max-size",
                       "1G")
    assert code == 1 and f"the recordings folder {site.folder} does not exist" in err


def run_unprivileged(words: list[str], folder: Path,
                     mode: int = 0o555) -> tuple[int, str, str]:
    """`ctrackd WORDS` in a process to which folder/locked has `mode` (default: no writing).

    Root may delete anything, so as root a forked child drops to nobody
    (the modules are already loaded: nothing to read from root's home);
    otherwise the folder gets `mode` for this run.
    """
    out_path, err_path = folder.parent / "out.txt", folder.parent / "err.txt"
    os.chmod(folder / "locked", mode)
    if os.geteuid() != 0:
        try:
            with open(out_path, "w") as out, open(err_path, "w") as err:
                saved, sys.stdout, sys.stderr = (sys.stdout, sys.stderr), out, err
                try:
                    code = cli.main(words)
                finally:
                    sys.stdout, sys.stderr = saved
        finally:
            os.chmod(folder / "locked", 0o755)
        return code, out_path.read_text(), err_path.read_text()
    out, err = open(out_path, "w"), open(err_path, "w")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            sys.stdout, sys.stderr = out, err
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = cli.main(words)
        except BaseException:  # noqa: BLE001 - reported to the parent through err.txt
            import traceback
            traceback.print_exc()
        finally:
            out.flush()
            err.flush()
            os._exit(code)
    out.close()
    err.close()
    _, status = os.waitpid(pid, 0)
    os.chmod(folder / "locked", 0o755)
    return os.waitstatus_to_exitcode(status), out_path.read_text(), err_path.read_text()


def locked_site(base: Path) -> tuple[Site, Path]:
    """A Site whose recording of call `z` lies in folder/locked (root's; the rest nobody's)."""
    os.chmod(base, 0o755)
    site = Site(base)
    locked = site.folder / "locked"
    locked.mkdir()
    mine = make_file(locked / "ctrackd-z.wav", 1000, hours_ago=30)
    save_call(site.store, "z", hours_ago=30, recording=str(mine))
    if os.geteuid() == 0:  # all but locked/ belong to nobody
        for path in (base, site.store.parent, *site.store.parent.iterdir(), site.folder,
                     *site.folder.iterdir(), site.config):
            os.chown(path, 65534, 65534)
        os.chown(locked, 0, 0)
    return site, mine


def test_permission_errors_are_reported_and_the_run_goes_on() -> None:
    """Files the process may not delete stay, with a word on stderr and exit 1; the rest go."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # not pytest's 0700 folder: nobody reads this
    try:
        site, mine = locked_site(base)
        code, out, err = run_unprivileged(["recordings", "prune", "-c", str(site.config),
                                           "--max-age-days", "0.01", "--format", "json"],
                                          site.folder)
        assert code == 1, err
        assert f"cannot delete {mine}: Permission denied" in err and "Traceback" not in err
        report = json.loads(out)
        assert {f["call_id"]: f["result"] for f in report["files"]} == {
            "z": "failed", "c1": "deleted", "c2": "deleted", "c3": "deleted", "c4": "deleted"}
        assert mine.exists() and site.left() == {"open"}
        conn = queries.connect(site.store, readonly=True)
        try:
            marks = deleted_marks(conn, ["z", "c1"])
        finally:
            conn.close()
        assert marks["z"] == (None, None) and marks["c1"][1] == "older than 0.01 days"
    finally:
        shutil.rmtree(base)


def test_a_file_that_cannot_be_measured_is_not_taken_for_missing() -> None:
    """Its folder may be listed but not searched (r--): lstat fails, as EIO or ESTALE would.

    The file is there: marking it `missing` would hide it from every later run.
    """
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        site, mine = locked_site(base)
        code, out, err = run_unprivileged(["recordings", "prune", "-c", str(site.config),
                                           "--max-age-days", "0.01", "--format", "json"],
                                          site.folder, mode=0o444)
        assert code == 1 and f"cannot measure {mine}: Permission denied" in err, err
        report = json.loads(out)
        assert {f["call_id"]: f["result"] for f in report["files"]} == {
            "c1": "deleted", "c2": "deleted", "c3": "deleted", "c4": "deleted"}
        assert mine.exists() and site.marks()["c1"][1] == "older than 0.01 days"
        conn = queries.connect(site.store, readonly=True)
        try:
            assert deleted_marks(conn, ["z"])["z"] == (None, None)
        finally:
            conn.close()
        # Measurable again, the next run finds it and applies the limit.
        code, out, err = run_unprivileged(["recordings", "prune", "-c", str(site.config),
                                           "--max-age-days", "0.01", "--format", "json"],
                                          site.folder, mode=0o777)
        assert (code, err) == (0, "")
        assert [(f["call_id"], f["result"]) for f in json.loads(out)["files"]] == [
            ("z", "deleted")]
        assert not mine.exists()
    finally:
        shutil.rmtree(base)


def after_the_scan(folder: Path, then: Callable[[], bool]) -> Callable[[], bool]:
    """A `should_stop` for prune() whose `then` answers only once the scan is over.

    The scan asks once per folder it reads, then the run before each deletion:
    the seam a race would use (a file changed between measuring and deleting).
    """
    folders = 1 + sum(len(dirs) for _, dirs, _ in os.walk(folder))
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > folders and then()

    return should_stop


def test_a_file_swapped_after_the_scan_is_not_deleted(tmp_path: Path) -> None:
    """Between measuring and deleting, a folder becomes a symlink out, a file is replaced."""
    site = Site(tmp_path)
    sub = make_file(site.folder / "sub" / "ctrackd-s.wav", 1000, hours_ago=30)
    save_call(site.store, "s", hours_ago=30, recording=str(sub))
    outside = make_file(tmp_path / "outside" / "ctrackd-s.wav", 1000, hours_ago=30)

    def swap() -> bool:
        if (site.folder / "sub").is_dir() and not (site.folder / "sub").is_symlink():
            shutil.rmtree(site.folder / "sub")
            (site.folder / "sub").symlink_to(outside.parent)
            site.files["c1"].unlink()
            make_file(site.files["c1"], 1000, hours_ago=5)  # another file, same name
            # The same file written to, its time set back (`touch -r`): only the size says so.
            c3, when = site.files["c3"], site.files["c3"].stat().st_mtime
            with c3.open("ab") as f:
                f.write(b"\0" * 500)
            os.utime(c3, (when, when))
        return False

    conn = queries.connect(site.store, readonly=False)
    try:
        report = prune(conn, site.folder, Policy(max_age_days=0.1), dry_run=False,
                       mark=lambda rows: mark_deleted(conn, rows),
                       should_stop=after_the_scan(site.folder, swap))
    finally:
        conn.close()
    results = {f.call_id: (f.result, f.error) for f in report.files}
    assert results["s"][0] == "failed" and outside.exists()
    assert results["c1"] == ("changed", "changed since it was measured: kept")
    assert site.files["c1"].exists() and site.marks()["c1"] == (None, None)
    assert results["c2"] == ("deleted", None) and not site.files["c2"].exists()
    assert results["c3"][0] == "changed" and site.files["c3"].stat().st_size == 1500


# -- the daemon's schedule -----------------------------------------------------------

DAEMON_CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret,
      ping_interval: 1, liveness_timeout: 5, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: var/calls.sqlite3}}
recordings: {{dir: {folder}}}
defaults: {{forward_to: PJSIP/office}}
log: {{level: warning, format: json}}
"""


async def run_daemon_once(tmp_path: Path, ami: FakeAmi, retention: RetentionConfig) -> Site:
    """Start the daemon on a Site, wait for one scheduled prune, stop it.

    All the Site's calls have ended: a daemon whose AMI shows no channels
    closes an open record at its first resync, maybe before the prune.
    """
    site = Site(tmp_path, open_call=False)
    site.config.write_text(DAEMON_CONFIG.format(ami_port=ami.port, folder=site.folder),
                           encoding="utf-8")
    config = load_config(site.config)
    config = replace(config, recordings=RecordingsConfig(dir=str(site.folder),
                                                         retention=retention))
    daemon = Daemon(config, stop_grace=1.0)
    await daemon.start()
    try:
        assert daemon.retention is not None
        deadline = time.monotonic() + 20
        while daemon.retention.runs < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert daemon.retention.runs >= 1, "the schedule never ran"
    finally:
        await daemon.stop()
    return site


async def test_daemon_prunes_on_its_schedule(tmp_path: Path, ami: FakeAmi) -> None:
    site = await run_daemon_once(tmp_path, ami, RetentionConfig(max_bytes=3000, interval=0.05))
    assert site.left() == {"c3", "c4"} and site.foreign.exists()
    marks = site.marks()
    assert [marks[c][1] for c in ("open", "c1", "c2", "c3")] == ["folder over 2.9 KiB"] * 3 + [
        None]


async def test_daemon_dry_run_only_logs(tmp_path: Path, ami: FakeAmi) -> None:
    site = await run_daemon_once(tmp_path, ami, RetentionConfig(max_bytes=3000, interval=0.05,
                                                                dry_run=True))
    assert site.left() == set(site.files)
    assert all(mark == (None, None) for mark in site.marks().values())


async def test_daemon_survives_a_failing_prune(tmp_path: Path, ami: FakeAmi) -> None:
    """A folder that vanished: the round logs it, the daemon keeps running, the next retries."""
    site = Site(tmp_path)
    site.config.write_text(DAEMON_CONFIG.format(ami_port=ami.port, folder=site.folder),
                           encoding="utf-8")
    shutil.rmtree(site.folder)
    config = load_config(site.config)
    config = replace(config, recordings=RecordingsConfig(
        dir=str(site.folder), retention=RetentionConfig(max_bytes=3000, interval=0.05)))
    daemon = Daemon(config, stop_grace=1.0)
    await daemon.start()
    try:
        assert daemon.retention is not None
        assert await daemon.retention.run_once() is None  # logged, not raised
        await asyncio.sleep(0.2)  # several rounds fail the same way
        assert not daemon._stopping.is_set()
    finally:
        await daemon.stop()


async def test_reschedule_applies_a_new_interval_at_once(tmp_path: Path) -> None:
    """A reload from 3600 s to a short interval must not wait out the hour (60 s here)."""
    site = Site(tmp_path, open_call=False)
    retention = RetentionConfig(max_bytes=3000, interval=3600, dry_run=True)
    config = replace(load_config(site.config),
                     recordings=RecordingsConfig(dir=str(site.folder), retention=retention))
    current = [config]

    async def write(sql: str, rows: list[dict[str, Any]]) -> None:
        raise AssertionError("a dry run marks nothing")

    task = RetentionTask(lambda: current[0], write, site.store)
    runner = asyncio.create_task(task.run_forever())
    try:
        while task.next_round is None:  # waiting for its first round, a minute away
            await asyncio.sleep(0.01)
        current[0] = replace(config, recordings=RecordingsConfig(
            dir=str(site.folder), retention=replace(retention, interval=0.05)))
        task.reschedule()
        deadline = time.monotonic() + 20
        while task.runs < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert task.runs >= 2, "the new interval did not apply"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert site.left() == set(site.files)


async def test_a_reload_that_changes_retention_reschedules_it(tmp_path: Path,
                                                              ami: FakeAmi) -> None:
    site = Site(tmp_path, open_call=False)
    plain = DAEMON_CONFIG.format(ami_port=ami.port, folder=site.folder)

    def with_interval(seconds: int) -> str:
        return plain.replace(f"recordings: {{dir: {site.folder}}}", (
            f"recordings:\n  dir: {site.folder}\n  retention: {{max_size: 3000B,"
            f" interval: {seconds}, dry_run: true}}"))

    site.config.write_text(with_interval(3600), encoding="utf-8")
    daemon = Daemon(load_config(site.config), stop_grace=1.0)
    await daemon.start()
    try:
        task = daemon.retention
        assert task is not None
        while task.next_round is None:
            await asyncio.sleep(0.01)
        first = task.next_round  # a minute after the start
        site.config.write_text(with_interval(10), encoding="utf-8")
        assert daemon.reload()
        deadline = time.monotonic() + 10
        while task.next_round == first and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert task.next_round is not None and task.next_round == pytest.approx(first - 50, abs=1)
        assert task.runs == 0
    finally:
        await daemon.stop()


def test_a_stop_request_ends_the_run_with_what_was_deleted_marked(tmp_path: Path) -> None:
    """The daemon stopping mid-run: no more deletions, the ones done are marked."""
    site = Site(tmp_path)
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    conn = queries.connect(site.store, readonly=False)
    try:
        report = prune(conn, site.folder, Policy(max_age_days=0.01), dry_run=False,
                       mark=lambda rows: mark_deleted(conn, rows),
                       should_stop=after_the_scan(site.folder, stop_after_two))
    finally:
        conn.close()
    assert report.stopped and site.left() == {"open", "c3", "c4"}
    marks = site.marks()
    assert [marks[c][1] for c in ("c1", "c2", "c3")] == ["older than 0.01 days"] * 2 + [None]


def test_a_stop_request_during_the_scan_ends_the_walk_and_changes_nothing(
        tmp_path: Path) -> None:
    """A big tree on a slow disk: the daemon must not wait for the walk to finish."""
    site = Site(tmp_path)
    os.remove(site.files["c4"])  # would be marked missing by a run that went on
    for n in range(20):
        make_file(site.folder / f"2024/{n:02d}/q-{n}.wav", 10, hours_ago=48)
    asked: list[int] = []

    def stop_at_the_third_folder() -> bool:
        asked.append(1)
        return len(asked) >= 3

    conn = queries.connect(site.store, readonly=False)
    try:
        report = prune(conn, site.folder, Policy(max_age_days=0.01), dry_run=False,
                       mark=lambda rows: mark_deleted(conn, rows),
                       should_stop=stop_at_the_third_folder)
    finally:
        conn.close()
    assert report.stopped and report.files == [] and len(asked) == 3
    assert site.left() == {"open", "c1", "c2", "c3"}
    assert all(mark == (None, None) for mark in site.marks().values())
