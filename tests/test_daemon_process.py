"""The daemon as a real process: start-up, signals (SIGHUP reload, SIGTERM drain), exit codes.

It logs JSON lines when stdout is not a terminal; the tests read those.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_daemon import environment, mset_variables

CTRACKD = [sys.executable, "-m", "ctrackd"]
ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
ami: {{host: 127.0.0.1, port: {ami_port}, username: ctrackd, secret: secret, reconnect_max: 1}}
agi: {{listen: "127.0.0.1:0"}}
store: {{path: calls.sqlite3}}
defaults: {{forward_to: PJSIP/office}}
log: {{level: info, format: auto}}
channels:
  google: {{label: {label}}}
numbers:
  "+74950000001": {{channel: google}}
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self._buffer = b""  # a log line may arrive in two reads

    def wait_for(self, event: str, timeout: float = 10.0) -> dict:
        """Read JSON log lines until `event` appears; return it."""
        for line in self.lines:
            if line.get("event") == event:
                return line
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read()
            if chunk:
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                for text in complete:
                    entry = json.loads(text)
                    self.lines.append(entry)
                    if entry.get("event") == event:
                        return entry
            elif self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} in the log: {self.lines}")

    @property
    def agi_port(self) -> int:
        return int(self.wait_for("daemon_started")["agi"].rsplit(":", 1)[1])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ctrackd.yaml"
    path.write_text(CONFIG.format(ami_port=closed_port(), label="Google Ads"), encoding="utf-8")
    return path


@pytest.fixture
def daemon(config_file: Path) -> Iterator[Running]:
    proc = subprocess.Popen([*CTRACKD, "run", "-c", str(config_file)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = Running(proc)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def track(port: int, uniqueid: str) -> dict[str, str]:
    async def call() -> list[str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(environment(uniqueid, "74950000001"))
        commands = []
        while line := await reader.readline():
            commands.append(line.decode().rstrip("\n"))
            writer.write(b"200 result=0\n")
        writer.close()
        return commands
    (command,) = asyncio.run(call())
    return mset_variables(command)


def test_bad_config_exits_1_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ami: {username: a, secret: b}\nstore: {path: x}\n"
                    "defaults: {forward_to: PJSIP/office, ring_timout: 5}\n", encoding="utf-8")
    done = subprocess.run([*CTRACKD, "run", "-c", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1
    assert f"{path}:3:" in done.stderr and "defaults.ring_timout" in done.stderr
    assert "Traceback" not in done.stderr


def test_runs_without_asterisk_and_says_so(daemon: Running) -> None:
    daemon.wait_for("daemon_started")
    warning = daemon.wait_for("ami_unreachable")
    assert warning["level"] == "warning"
    assert "secret" not in json.dumps(daemon.lines)
    assert track(daemon.agi_port, "1.1")["CTRACK_FORWARD"] == "PJSIP/office"


def test_sighup_keeps_the_old_config_when_the_new_one_is_bad(daemon: Running,
                                                             config_file: Path) -> None:
    port = daemon.agi_port
    good = config_file.read_text(encoding="utf-8")
    config_file.write_text(good.replace("channel: google", "channel: gogle"), encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    failed = daemon.wait_for("config_reload_failed")
    assert f"{config_file}:9:" in failed["error"] and "gogle" in failed["error"]
    assert track(port, "2.1")["CTRACK_LABEL"] == "Google Ads"   # still the old config

    config_file.write_text(CONFIG.format(ami_port=1, label="Google Search"), encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config_reloaded")
    assert daemon.wait_for("config_needs_restart")["sections"] == ["ami"]
    assert track(port, "2.2")["CTRACK_LABEL"] == "Google Search"
    # the running AMI settings stay, so a second reload still says a restart is due
    daemon.lines.clear()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config_reloaded")
    assert daemon.wait_for("config_needs_restart")["sections"] == ["ami"]


def test_sigterm_drains_in_flight_sessions(daemon: Running, config_file: Path) -> None:
    port = daemon.agi_port
    stuck = socket.create_connection(("127.0.0.1", port))
    stuck.sendall(environment("3.1", "74950000001"))
    stuck.recv(4096)          # the MSet arrives; we never answer it (Asterisk stuck)
    daemon.proc.send_signal(signal.SIGTERM)
    stopped = daemon.wait_for("daemon_stopped", timeout=20)
    assert stopped["agi_sessions_cancelled"] == 1
    assert daemon.proc.wait(timeout=10) == 0
    assert b"Traceback" not in daemon.proc.stderr.read()  # the cancelled session is quiet
    stuck.close()
    import sqlite3
    conn = sqlite3.connect(config_file.parent / "calls.sqlite3")
    assert conn.execute("SELECT channel FROM calls WHERE call_id='3.1'").fetchone() == ("google",)
    conn.close()
