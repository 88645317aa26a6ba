"""Asterisk's side of AGI: FastAGI over TCP and classic AGI over a child's stdin/stdout.

The daemon's FastAGI server and the `ctrackd-agi` fallback script are only as
good as their behaviour against a real Asterisk, so this client reproduces
res/res_agi.c as the captures (agi/A-F) show it: the environment lines in
`launch_netscript()` + `setup_env()` order, `unknown` for missing caller data,
one reply per command line (`agi_handle_command()`: 200 / 510 / 511 / 520,
multi-line 520 with the usage text), `EXEC` -> `200 result=0`, a line that
begins with `failure` -> AGISTATUS=FAILURE, the inline `HANGUP\\n` when the
caller hangs up mid-dialogue (then 511 for commands that are not dead-safe),
and the final `HANGUP\\n` (AGISIGHUP) after the server closed. Commands are
split with the literal port of `parse_args()` (asterisk_args.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tests.simulator.asterisk_args import AGI_BUF_LEN, exec_app_data, parse_args

CONNECT_TIMEOUT = 2.0          # res_agi.c MAX_AGI_CONNECT (2000 ms)
AGI_PORT = 4573
MSG_511 = "511 Command Not Permitted on a dead channel or intercept routine\n"
RESULT_TEXT = {200: "Success", 510: "Invalid or unknown command", 520: "Usage",
               511: "Command Not Permitted on a dead channel or intercept routine"}
#: The usage text of the XML docs, as agi/D shows it (raw markup included).
USAGE = {
    ("set", "variable"): "Sets a variable to the current channel.",
    ("get", "data"): "Stream the given <replaceable>file</replaceable>, and receive DTMF data.\n"
                     "Returns the digits received from the channel at the other end.",
}


class AgiChannel(Protocol):
    """What an AGI session needs from the channel it runs on (pbx.Channel)."""

    hungup: asyncio.Event          # set when the channel is hung up (the AGI then runs "dead")

    def agi_env(self) -> list[tuple[str, str]]: ...   # agi_channel ... agi_threadid
    def get_var(self, name: str) -> str | None: ...
    def set_var(self, name: str, value: str) -> None: ...
    def exec_app(self, app: str, data: str) -> int: ...
    def substitute(self, text: str) -> str: ...
    def answer(self) -> None: ...
    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int) -> tuple[int, str]: ...
    def agi_exec(self, command: str, code: int | None, command_id: int) -> None: ...


@dataclass
class AgiResult:
    status: str                                   # AGISTATUS: SUCCESS FAILURE NOTFOUND HANGUP
    commands: list[str] = field(default_factory=list)
    transcript: list[tuple[float, str, bytes]] = field(default_factory=list)  # (t, "AST->SRV"|"SRV->AST", bytes)
    variables: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None                 # stdin AGI: the child's exit status


# (words, runs on a dead channel): res_agi.c `commands[]` in its order.
COMMANDS: list[tuple[tuple[str, ...], bool]] = [
    (("answer",), False), (("asyncagi", "break"), True), (("channel", "status"), False),
    (("database", "del"), True), (("database", "deltree"), True), (("database", "get"), True),
    (("database", "put"), True), (("exec",), True), (("get", "data"), False),
    (("get", "full", "variable"), True), (("get", "option"), False), (("get", "variable"), True),
    (("hangup",), False), (("noop",), True), (("receive", "char"), False), (("receive", "text"), False),
    (("record", "file"), False), (("say", "alpha"), False), (("say", "digits"), False),
    (("say", "number"), False), (("say", "phonetic"), False), (("say", "date"), False),
    (("say", "time"), False), (("say", "datetime"), False), (("send", "image"), False),
    (("send", "text"), False), (("set", "autohangup"), False), (("set", "callerid"), False),
    (("set", "context"), False), (("set", "extension"), False), (("set", "music"), False),
    (("set", "priority"), False), (("set", "variable"), True), (("stream", "file"), False),
    (("control", "stream", "file"), False), (("tdd", "mode"), False), (("verbose",), True),
    (("wait", "for", "digit"), False), (("gosub",), False),
]


def find_command(argv: Sequence[str]) -> tuple[tuple[str, ...], bool] | None:
    """res_agi.c `find_command(cmds, exact=0)`: extra words are arguments; a
    command needing more words than given does not match; case-insensitive."""
    for words, dead_ok in COMMANDS:
        if len(argv) < len(words):
            continue
        if all(w == a.lower() for w, a in zip(words, argv)):
            return words, dead_ok
    return None


class AgiDialogue:
    """One session's command handling, shared by FastAGI and stdin AGI."""

    def __init__(self, channel: AgiChannel, dead: bool = False, usage_delay: float = 0.04) -> None:
        self.channel, self.dead, self.usage_delay = channel, dead, usage_delay
        self.status = "SUCCESS"
        self.astdb: dict[tuple[str, str], str] = {}
        self._next_id = 1040233066

    async def handle(self, line: str) -> list[bytes]:
        """Replies (one or more writes) to one command line."""
        argv = parse_args(line)
        self._next_id += 7919
        cid = self._next_id
        self.channel.agi_exec(line, None, cid)
        found = find_command(argv)
        if found is None:
            self.channel.agi_exec(line, 510, cid)
            return [b"510 Invalid or unknown command\n"]
        words, dead_ok = found
        if self.dead and not dead_ok:
            self.channel.agi_exec(line, 511, cid)
            return [MSG_511.encode()]
        reply = await self._run(words, argv)
        if reply is None:
            self.channel.agi_exec(line, 520, cid)
            usage = USAGE.get(words)
            if usage is None:
                return [b"520 Invalid command syntax.  Proper usage not available.\n"]
            return [b"520-Invalid command syntax.  Proper usage follows:\n",
                    f"{usage}\n520 End of proper usage.\n".encode()]
        self.channel.agi_exec(line, 200, cid)
        return [f"200 result={reply}\n".encode()]

    async def _run(self, words: tuple[str, ...], argv: list[str]) -> str | None:
        """The handler; returns the text after `200 result=` or None for 520."""
        ch, argc = self.channel, len(argv)
        if words == ("exec",):
            if argc < 2:
                return None
            app, data = exec_app_data(argv)
            if (ch.get_var("AGIEXECFULL") or "").lower() in ("yes", "true", "y", "t", "1", "on"):
                data = ch.substitute(data)               # ast_true(AGIEXECFULL): ${...} expanded
            return str(ch.exec_app(app, data))
        if words == ("set", "variable"):
            if argc != 4:
                return None
            ch.set_var(argv[2], argv[3])
            return "1"
        if words == ("get", "variable"):
            if argc != 3:
                return None
            value = ch.get_var(argv[2])
            return "0" if value is None else f"1 ({value})"
        if words == ("get", "full", "variable"):
            if argc not in (4, 5):
                return None
            return f"1 ({ch.substitute(argv[3])})"
        if words == ("verbose",):
            return None if argc < 2 else "1"
        if words == ("get", "data"):
            # handle_getdata(): `200 result=4821` ("#" or max digits), `200 result=`
            # ("#" alone), `200 result=48 (timeout)` / `200 result= (timeout)`, and
            # `200 result=-1` when the channel hangs up while it waits.
            if argc < 3:
                return None
            timeout = c_atoi(argv[3]) if argc >= 4 else 0
            max_digits = c_atoi(argv[4]) if argc >= 5 else 1024
            res, data = await ch.get_data(argv[2], timeout, max_digits)
            if res == 1:
                return f"{data} (timeout)"
            return "-1" if res < 0 else data
        if words == ("database", "put"):
            if argc != 5:
                return None
            self.astdb[(argv[2], argv[3])] = argv[4]
            return "1"
        if words == ("database", "get"):
            if argc != 4:
                return None
            value = self.astdb.get((argv[2], argv[3]))
            return "0" if value is None else f"1 ({value})"
        if words == ("answer",):
            ch.answer()
            return "0"
        if words == ("hangup",):
            ch.hungup.set()
            return "1"
        if words == ("stream", "file"):
            return None if argc < 4 or argc > 5 else "0 endpos=0"
        return "0"                      # noop and the rest: accepted, nothing to model


def c_atoi(text: str) -> int:
    """C atoi(): leading blanks, a sign, then digits; anything else stops (0 if none)."""
    text = text.lstrip(" \t")
    sign, digits = 1, ""
    if text[:1] in "+-" and text[:1]:
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return sign * int(digits) if digits else 0


def _env_lines(env: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\n" for k, v in env).encode()


def split_agi_url(url: str) -> tuple[str, int, str]:
    """res_agi.c `launch_netscript()`: agi://host[:port][/script] -> host, port, script."""
    rest = url[len("agi://"):]
    host, _, script = rest.partition("/")
    host, _, port = host.partition(":")
    return host, int(port) if port else AGI_PORT, script


class _CommandReader:
    """`run_agi()` reads each command with fgets(buf, AGI_BUF_LEN): at most 2047
    bytes, so a longer line is cut and its tail is read as the next command."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader, self.pending = reader, b""

    async def next(self) -> bytes:
        if not self.pending:
            self.pending = await self.reader.readline()
        cut = AGI_BUF_LEN - 1
        line, self.pending = self.pending[:cut], self.pending[cut:]
        return line


async def _serve(dialogue: AgiDialogue, reader: asyncio.StreamReader, write, result: AgiResult,
                 on_hangup, t0: float) -> None:
    """`run_agi()`'s loop: read a command, answer it; notice the channel's
    hang-up while waiting for one; stop at EOF or at a `failure` line."""
    ch, commands = dialogue.channel, _CommandReader(reader)
    hang = asyncio.ensure_future(ch.hungup.wait())
    try:
        while True:
            read = asyncio.ensure_future(commands.next())
            while not read.done():
                await asyncio.wait({read} if dialogue.dead else {read, hang},
                                   return_when=asyncio.FIRST_COMPLETED)
                if hang.done() and not dialogue.dead:
                    dialogue.dead, dialogue.status = True, "HANGUP"
                    await on_hangup()
            raw = read.result()
            if not raw:
                return
            result.transcript.append((time.monotonic() - t0, "SRV->AST", raw))
            line = raw.decode("utf-8", "replace")
            line = line[:-1] if line.endswith("\n") else line   # only the newline, a \r stays
            if line[:7].lower() == "failure":
                dialogue.status = "FAILURE"
                return
            result.commands.append(line)
            for i, chunk in enumerate(await dialogue.handle(line)):
                if i:
                    await asyncio.sleep(dialogue.usage_delay)  # agi/D: the usage body ~40 ms later
                result.transcript.append((time.monotonic() - t0, "AST->SRV", chunk))
                await write(chunk)
    finally:
        hang.cancel()


async def run_fastagi(url: str, channel: AgiChannel, args: Sequence[str] = (), *,
                      connect_timeout: float = CONNECT_TIMEOUT, usage_delay: float = 0.04) -> AgiResult:
    """`AGI(agi://host:port/script,args...)` on `channel`."""
    host, port, script = split_agi_url(url)
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 20), connect_timeout)
    except (OSError, asyncio.TimeoutError):
        return AgiResult(status="FAILURE")
    result = AgiResult(status="SUCCESS")
    dialogue = AgiDialogue(channel, dead=channel.hungup.is_set(), usage_delay=usage_delay)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def on_hangup() -> None:
        result.transcript.append((time.monotonic() - t0, "AST->SRV", b"HANGUP\n"))
        await write(b"HANGUP\n")

    env = [("agi_network", "yes")] + ([("agi_network_script", script)] if script else [])
    env += [("agi_request", url)] + channel.agi_env()
    env += [(f"agi_arg_{i}", a) for i, a in enumerate(args, 1)]
    cut = [k for k, _ in env].index("agi_extension")
    head, tail = env[:cut], env[cut:]
    try:
        for part in (_env_lines(head), _env_lines(tail) + b"\n"):   # two chunks, as agi/A
            result.transcript.append((time.monotonic() - t0, "AST->SRV", part))
            await write(part)
        await _serve(dialogue, reader, write, result, on_hangup, t0)
        if (channel.get_var("AGISIGHUP") or "yes").lower() not in ("no", "false", "off", "0", "n", "f"):
            result.transcript.append((time.monotonic() - t0, "AST->SRV", b"HANGUP\n"))
            await write(b"HANGUP\n")
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    result.status = dialogue.status
    return result


async def run_stdin_agi(cmd: Sequence[str], channel: AgiChannel, request: str,
                        args: Sequence[str] = (), *, dead: bool = False) -> AgiResult:
    """`AGI(/path/script,args...)`: run `cmd + args` and speak AGI over its stdin/stdout.

    `request` is the script path Asterisk would report (agi_request). Spawn
    failure: the file is missing -> NOTFOUND, otherwise FAILURE. At EOF Asterisk
    waits for the child (waitpid) and a non-zero exit status makes it FAILURE;
    a hang-up during the session sends SIGHUP (`kill(pid, SIGHUP)`).
    """
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, *args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, env=dict(os.environ),
                                                    limit=1 << 20)
    except FileNotFoundError:
        return AgiResult(status="NOTFOUND")
    except OSError:
        return AgiResult(status="FAILURE")
    result = AgiResult(status="SUCCESS")
    dialogue = AgiDialogue(channel, dead=dead or channel.hungup.is_set())
    assert proc.stdin is not None and proc.stdout is not None

    async def write(data: bytes) -> None:
        proc.stdin.write(data)
        await proc.stdin.drain()

    async def on_hangup() -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGHUP)

    env = [("agi_request", request)] + channel.agi_env() + [(f"agi_arg_{i}", a) for i, a in enumerate(args, 1)]
    try:
        await write(_env_lines(env) + b"\n")
        await _serve(dialogue, proc.stdout, write, result, on_hangup, t0)
    except (ConnectionError, OSError):
        pass
    if dialogue.status == "FAILURE" and proc.returncode is None:
        proc.send_signal(signal.SIGHUP)          # send_sighup after a `failure` line
    result.returncode = await proc.wait()
    if dialogue.status == "SUCCESS" and result.returncode != 0:
        dialogue.status = "FAILURE"
    result.status = dialogue.status
    return result
