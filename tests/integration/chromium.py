"""Drive a real headless Chromium over its DevTools pipe (no websocket library, no network).

``load(path)`` opens a local page, waits for its load event and returns what a reader of the page
would want checked: console messages and uncaught exceptions, failed loads, every request that
left the file (anything but ``file:`` and ``data:``), and a full-page PNG screenshot.
Chromium comes from Debian (scripts/install_chromium.sh).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 60.0


def binary() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # URLs requested that are not file: or data:
    screenshot: bytes = b""
    width: int = 0
    height: int = 0


class _Pipe:
    """Chromium's --remote-debugging-pipe: JSON messages ended by NUL, commands on fd 3, replies on fd 4."""

    def __init__(self, exe: str, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        cmd_r, out_w = (_above_4(fd) for fd in (cmd_r, out_w))  # so that dup2 onto 3 and 4 always copies

        def wire() -> None:  # in the child: its fd 3 reads our commands, its fd 4 writes replies
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        args = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1100,900",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args, preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result") or {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return dict(json.loads(msg))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        os.close(self._cmd_w)
        os.close(self._out_r)


def _above_4(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def load(page: Path, profile: Path) -> PageLoad:
    """Open page in a fresh headless Chromium; what went wrong, what it fetched, and a screenshot."""
    exe = binary()
    if exe is None:
        raise RuntimeError("no chromium on PATH: run scripts/install_chromium.sh")
    pipe = _Pipe(exe, profile)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired")
        pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drains what the load logged
        size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        width, height = int(size["width"]), int(size["height"])
        shot = pipe.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
            session=session,
        )
        result = PageLoad(screenshot=base64.b64decode(shot["data"]), width=width, height=height)
        for event in pipe.events:
            _note(event, result)
        return result
    finally:
        pipe.close()


def _note(event: dict[str, Any], result: PageLoad) -> None:
    method, p = event.get("method"), event.get("params") or {}
    if method == "Runtime.exceptionThrown":
        result.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
    elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
        result.errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
    elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
        result.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    elif method == "Network.loadingFailed":
        result.errors.append(f"failed load: {p.get('errorText')}")
    elif method == "Network.requestWillBeSent":
        url = str(p["request"]["url"])
        if not url.startswith(("file:", "data:")):
            result.requests.append(url)
