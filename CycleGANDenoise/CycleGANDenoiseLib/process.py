"""One engine run in a child process: start it, read its events line by line, cancel it at once.

The module never runs the network inside 3D Slicer's process: a child keeps Slicer responsive,
can be stopped, and takes Slicer down with it if it crashes. A reader thread puts each output
line on a queue; :meth:`EngineProcess.poll` (driven by a ``qt.QTimer`` in Slicer, by a loop in
scripts and tests) turns the queued lines into :class:`~.events.Event` objects on the caller's
thread. Cancel kills the whole process tree at once: Slicer's ``PythonSlicer`` is a launcher
whose child is the real Python, so the runner kills every process it knows of (the engine reports
its own PID first, and ``psutil``, when installed, finds the rest).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from typing import IO, Callable, Optional, Protocol

from CycleGANDenoiseLib.events import Event, parse_line

TAIL_LINES = 50
"""Output lines kept for the message of a failed run."""


class ProcessHandle(Protocol):
    """What the runner needs of a started process (``subprocess.Popen`` has it)."""

    pid: int
    stdout: Optional[IO[str]]

    def poll(self) -> Optional[int]: ...

    def wait(self, timeout: Optional[float] = None) -> int: ...

    def kill(self) -> None: ...


Launcher = Callable[[list[str], dict[str, str]], ProcessHandle]
"""Starts ``command`` with extra environment variables, stdout and stderr merged into one text pipe.
In Slicer: ``slicer.util.launchConsoleProcess(command, updateEnvironment=env)``."""


def popen_launcher(command: list[str], environment: dict[str, str]) -> ProcessHandle:
    """The launcher outside Slicer: ``subprocess.Popen`` with merged, line-buffered text output."""
    return subprocess.Popen(
        command,
        env={**os.environ, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )


class EngineProcess:
    """A running ``ctdenoise`` command.

    Attributes:
        state: ``running``, ``succeeded``, ``failed`` or ``cancelled``.
        returncode: the child's exit status once it ended.
        summary: the ``done`` event's data on success.
        error: the engine's one-line error (or the last output lines) on failure.
        warnings: the warnings the engine reported.
    """

    def __init__(self, command: list[str], environment: dict[str, str], launcher: Launcher = popen_launcher) -> None:
        self.command = command
        self.state = "running"
        self.returncode: Optional[int] = None
        self.summary: dict = {}
        self.error = ""
        self.warnings: list[str] = []
        self.started_at = time.monotonic()
        self._pids: set[int] = set()
        self._engine_pid: Optional[int] = None
        self._ended = False
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._process = launcher(command, environment)
        self._pids.add(self._process.pid)
        self._reader = threading.Thread(target=self._read, name="ctdenoise-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._process.stdout
        while stream is not None:
            try:
                line = stream.readline()
            except UnicodeDecodeError:  # a line in another encoding: skip it, keep reading
                continue
            except (OSError, ValueError):  # the pipe closed under us (a kill)
                break
            if not line:
                break
            self._lines.put(line)
        self._lines.put(None)

    @property
    def running(self) -> bool:
        """Whether the run has not ended yet."""
        return self.state == "running"

    def poll(self) -> list[Event]:
        """The events that arrived since the last call; updates :attr:`state` when the child ended."""
        events: list[Event] = []
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = self._ended = True
                break
            events.append(self._handle(parse_line(line)))
        if ended and self.state == "running":
            self._finish(self._process.wait())
        return events

    def _handle(self, event: Event) -> Event:
        if event.kind == "started" and isinstance(event.data.get("pid"), int):
            self._engine_pid = int(event.data["pid"])
            self._pids.add(self._engine_pid)
        elif event.kind == "warning":
            self.warnings.append(event.text)
        elif event.kind == "done":
            self.summary = dict(event.data)
        elif event.kind == "error":
            self.error = event.text
        if event.kind in ("log", "error"):
            self._tail.append(event.text)
        return event

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        if self.state == "cancelled":
            return
        if returncode == 0 and self.summary:
            self.state = "succeeded"
            return
        self.state = "failed"
        if not self.error:
            tail = [line for line in self._tail if line.strip()]
            self.error = tail[-1] if tail else f"the engine stopped with exit status {returncode} and no message"

    def wait(
        self,
        timeout: Optional[float] = None,
        interval: float = 0.05,
        on_event: Optional[Callable[[Event], None]] = None,
    ) -> str:
        """Poll until the run ends (or ``timeout`` seconds pass); returns :attr:`state`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.running:
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(interval)
        return self.state

    def cancel(self, grace_s: float = 10.0) -> None:
        """Kill the child and everything it started, at once; the run ends as ``cancelled``.

        Behind a launcher the engine's PID arrives with its first line: a cancel that comes before
        it waits (at most ``grace_s``) for that line or the end of the output, so the engine is
        never left running after the launcher is gone.
        """
        if not self.running:
            return
        self.state = "cancelled"
        deadline = time.monotonic() + grace_s
        while self._engine_pid is None and not self._ended and time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                self._ended = True
            else:
                self._handle(parse_line(line))
        for pid in sorted(self._tree(), reverse=True):
            _kill(pid)
        try:
            self._process.kill()
        except OSError:
            pass
        try:
            self.returncode = self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.error = "cancelled"

    def _tree(self) -> set[int]:
        """The launcher, the engine's own PID and, with psutil, every descendant."""
        pids = set(self._pids)
        try:
            import psutil
        except ImportError:
            return pids
        for pid in list(pids):
            try:
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                continue
        return pids


def _kill(pid: int) -> None:
    """Kill one process (SIGKILL; TerminateProcess on Windows); gone already is fine."""
    try:
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    except (OSError, ValueError):
        pass
