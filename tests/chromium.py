"""A minimal headless-Chromium driver for the browser tests: the DevTools protocol over a pipe.

``chromium --headless --remote-debugging-pipe`` reads protocol messages (JSON, each ended by a
NUL byte) from its file descriptor 3 and writes replies and events to descriptor 4. The pipes are
passed with ``pass_fds`` and moved to 3 and 4 by a few lines of Python run before the browser. Standard library only:
nothing is downloaded, no port is opened.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Put the two pipe ends on descriptors 3 and 4, then become the browser. (A shell's `3<&N` cannot
# do it: dash, Debian's /bin/sh, accepts only single-digit descriptors.) Copies go above 9 first so
# that moving one end cannot overwrite the other.
_ON_FDS_3_AND_4 = """import fcntl, os, sys
fds = [int(a) for a in sys.argv[1:3]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
for fd in fds:
    os.close(fd)
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in high:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless browser with one page; ``call`` sends a command to the page and waits for its reply."""

    def __init__(self, binary: str, profile: Path, width: int = 1200, height: int = 800, timeout: float = 15.0):
        self.timeout = timeout
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}", "--remote-debugging-pipe",
                f"--window-size={width},{height}", "about:blank"]
        Path(profile).mkdir(parents=True, exist_ok=True)
        self.log = Path(profile) / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ON_FDS_3_AND_4, str(to_child_r), str(from_child_w), *args],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise CDPError("timed out waiting for Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise CDPError(f"Chromium closed the pipe (exit code {self.proc.poll()}); its log ends:\n{tail}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, browser: bool = False) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if not browser and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for i, ev in enumerate(self.events):
            if ev["method"] == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            if "method" in ev:
                self.events.append(ev)

    # ------------------------------------------------------------------ page helpers
    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); a thrown exception raises ``CDPError``."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise CDPError(f"{expression[:80]!r} threw: {res['exceptionDetails']}")
        return res["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A left click at CSS pixel (x, y) of the viewport, as a user's mouse."""
        for kind, buttons in (("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none",
                                                   "buttons": buttons, "clickCount": 1})

    def type_text(self, text: str) -> None:
        self.call("Input.insertText", {"text": text})

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """JavaScript exceptions and console/log errors seen so far."""
        self._drain()
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:500])
        return out

    def _drain(self) -> None:
        while select.select([self._from_child], [], [], 0)[0] or b"\0" in self._buf:
            try:
                ev = self._read_message(time.monotonic() + 1)
            except CDPError:
                return
            if "method" in ev:
                self.events.append(ev)

    def close(self) -> None:
        try:
            self.call("Browser.close", browser=True)
        except (CDPError, OSError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
