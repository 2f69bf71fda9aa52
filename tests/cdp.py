"""A tiny Chrome DevTools Protocol client over ``--remote-debugging-pipe``, standard library only.

Chromium reads commands from its file descriptor 3 and writes replies and events to its file
descriptor 4, each message one JSON object followed by a NUL byte. :class:`Browser` starts a
headless Chromium with those two pipes, opens a page (a target attached in *flatten* mode, so
commands carry its ``sessionId``), and collects what the page reports as errors::

    with Browser(executable) as browser:
        page = browser.new_page()
        page.goto(Path("index.html").resolve().as_uri())
        assert not page.errors and not page.broken_images()
        page.screenshot(Path("index.png"))

Every wait has a deadline: a browser that does not answer raises :class:`CDPTimeout`, one that
exits raises :class:`CDPError` (both with the end of the browser's stderr), never a hang; the
browser and every process it started are killed when the ``with`` block ends.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

#: names the browser goes by on PATH, in the order they are tried
EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
         "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--mute-audio")


class CDPError(RuntimeError):
    """The browser answered a command with an error, or went away."""


class CDPTimeout(CDPError, TimeoutError):
    """The browser did not answer (or the page did not load) in time."""


def find_browser() -> str | None:
    """The first Chromium-like executable on PATH, or None."""
    for name in EXECUTABLES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _child_fds(read_end: int, write_end: int):
    """A preexec function: the child sees ``read_end`` as fd 3 and ``write_end`` as fd 4."""

    def arrange() -> None:
        w = os.dup(write_end) if write_end == 3 else write_end  # not clobbered by the first dup2
        os.dup2(read_end, 3)
        os.dup2(w, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    return arrange


class Browser:
    """A headless Chromium driven through its debugging pipe."""

    def __init__(self, executable: str | None = None, timeout: float = 30.0,
                 window_size: tuple[int, int] = (1280, 900), extra_flags: tuple[str, ...] = ()):
        self.executable = executable or find_browser()
        if not self.executable:
            raise CDPError(f"no browser found on PATH (tried {', '.join(EXECUTABLES)})")
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = b""
        self._events: list[dict] = []  # events read while waiting for something else
        self._pages: dict[str, Page] = {}  # sessionId -> page
        self._profile = tempfile.mkdtemp(prefix="zoobook-chromium-")
        self._stderr = open(os.path.join(self._profile, "stderr.log"), "w+b")
        # Two pipes: ours to write commands (its fd 3), its to write replies (its fd 4). Four new
        # descriptors take the lowest free numbers, so 3 and 4 are open here and pass_fds keeps
        # them (make_inheritable runs on them before the preexec function moves ours there).
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        args = [self.executable, *FLAGS, f"--window-size={window_size[0]},{window_size[1]}",
                f"--user-data-dir={os.path.join(self._profile, 'profile')}", *extra_flags, "about:blank"]
        try:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
                pass_fds=(3, 4), preexec_fn=_child_fds(cmd_r, res_w), start_new_session=True)
        except BaseException:
            for fd in (cmd_r, res_w, self._cmd_w, self._res_r):
                os.close(fd)
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        os.close(cmd_r)
        os.close(res_w)
        self._closed = False

    # -- the pipe ---------------------------------------------------------------------------

    def _stderr_tail(self, chars: int = 2000) -> str:
        try:
            self._stderr.flush()
            text = Path(self._stderr.name).read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:].strip()

    def _gone(self, what: str) -> CDPError:
        code = self.process.poll()
        return CDPError(f"{what}: the browser {'exited with ' + str(code) if code is not None else 'closed its pipe'}"
                        f" ({self.executable}); its stderr ends:\n{self._stderr_tail()}")

    def _write(self, message: dict) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            _, ready, _ = select.select([], [self._cmd_w], [], self.timeout)
            if not ready:
                raise CDPTimeout(f"the browser did not read {message.get('method')} within {self.timeout:g} s")
            try:
                sent = os.write(self._cmd_w, data)
            except BrokenPipeError:
                raise self._gone(f"sending {message.get('method')}") from None
            data = data[sent:]

    def _read(self, deadline: float, waiting_for: str, timeout: float) -> dict:
        """The next message, by ``deadline`` (time.monotonic)."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([self._res_r], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                raise CDPTimeout(f"no answer from the browser within {timeout:g} s while waiting for "
                                 f"{waiting_for}; its stderr ends:\n{self._stderr_tail()}")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise self._gone(f"waiting for {waiting_for}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:  # an event: let its page see it now, keep it for wait_for
            page = self._pages.get(message.get("sessionId"))
            if page is not None:
                page._observe(message)
        return message

    def send(self, method: str, params: dict | None = None, session_id: str | None = None,
             timeout: float | None = None) -> dict:
        """Send a command and return its result; an error reply raises CDPError."""
        message = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self._write(message)
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, method, timeout)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise CDPError(f"{method} failed: {reply['error'].get('message')} "
                                   f"({reply['error'].get('data', '')})".rstrip(" ()"))
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_for(self, method: str, session_id: str | None = None, timeout: float | None = None) -> dict:
        """The first event ``method`` (of ``session_id``'s page) not yet waited for."""
        for i, event in enumerate(self._events):
            if event["method"] == method and event.get("sessionId") == session_id:
                return self._events.pop(i)
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline, method, timeout)
            if message.get("method") == method and message.get("sessionId") == session_id:
                return message
            if "method" in message:
                self._events.append(message)

    # -- pages ------------------------------------------------------------------------------

    def new_page(self) -> Page:
        """A new tab, attached (flatten), with Runtime, Log and Page enabled."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        self._pages[session] = page
        for domain in ("Runtime", "Log", "Page"):
            page.send(f"{domain}.enable")
        return page

    # -- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Ask the browser to close, then kill its process group whatever it said; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.process.poll() is None:
                try:
                    message = {"id": next(self._ids), "method": "Browser.close", "params": {}}
                    os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
                    self.process.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        finally:
            try:  # the renderers, the zygote and the rest share the browser's new session
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for fd in (self._cmd_w, self._res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


def _is_favicon(text: str) -> bool:
    return "favicon" in text.lower()


class Page:
    """One attached tab: navigation, the errors it reported, JavaScript, screenshots."""

    def __init__(self, browser: Browser, target_id: str, session_id: str):
        self.browser, self.target_id, self.session_id = browser, target_id, session_id
        self.errors: list[str] = []  # since the last goto; favicon complaints left out

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        return self.browser.send(method, params, self.session_id, timeout)

    def _observe(self, event: dict) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in args)
            line = f"console.{params['type']}: {text}"
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            text = exception.get("description") or details.get("text", "")
            line = f"uncaught exception: {text} ({details.get('url', '')}:{details.get('lineNumber', '?')})"
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            line = f"{entry.get('source', 'log')} error: {entry.get('text', '')} {entry.get('url', '')}".rstrip()
        else:
            return
        if not _is_favicon(line):
            self.errors.append(line)

    def goto(self, url: str, timeout: float | None = None) -> None:
        """Navigate and wait for the load event; clears :attr:`errors` first."""
        self.errors = []
        self.browser._events = [e for e in self.browser._events if e.get("sessionId") != self.session_id]
        result = self.send("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise CDPError(f"navigating to {url} failed: {result['errorText']}")
        try:
            self.browser.wait_for("Page.loadEventFired", self.session_id, timeout)
        except CDPTimeout as e:
            raise CDPTimeout(f"{url} did not fire its load event: {e}") from None

    def evaluate(self, expression: str, timeout: float | None = None):
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"evaluating {expression!r} threw: "
                           f"{details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    def broken_images(self) -> list[str]:
        """The sources of the page's images that have not loaded (or decoded to nothing)."""
        return self.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or the whole page) written to ``path``."""
        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": min(size["height"], 16384), "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
