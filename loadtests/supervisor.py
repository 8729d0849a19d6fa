"""Child processes for run.py: started pinned, each in its own process group, always cleaned up.

Every child gets a new session (so a Ctrl-C in the terminal reaches only run.py,
which then tears the children down in order) and is stopped with SIGTERM to its
whole group, then SIGKILL after a grace period: workers forked by the gateway or
nginx die with their parent.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

SYSTEM_REDIS_PORT = 6379  # never started on, never connected to


class StartupError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Pinning:
    """CPU sets: the target under test gets its own core, everything else shares another."""

    def __init__(self, enabled: bool) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.taskset = shutil.which("taskset")
        self.warning = ""
        if not enabled:
            self.warning = "pinning disabled (--no-pin): results are noisier"
        elif self.taskset is None:
            self.warning = "taskset not found (apt-get install util-linux): processes are NOT pinned"
        elif len(cpus) < 2:
            self.warning = f"only {len(cpus)} CPU available: processes are NOT pinned"
        self.enabled = not self.warning
        self.target = str(cpus[0])
        self.aux = str(cpus[1]) if len(cpus) > 1 else str(cpus[0])
        self.both = f"{cpus[0]},{cpus[1]}" if len(cpus) > 1 else str(cpus[0])

    def wrap(self, argv: Sequence[str], cpus: str | None) -> list[str]:
        if not self.enabled or cpus is None or self.taskset is None:
            return list(argv)
        return [self.taskset, "-c", cpus, *argv]

    def describe(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "target_cpus": self.target,
            "aux_cpus": self.aux,
            "warning": self.warning or None,
        }


class Supervisor:
    def __init__(self, log_dir: Path, pinning: Pinning) -> None:
        self.log_dir = log_dir
        self.pinning = pinning
        self.children: list[Child] = []
        self._ports: set[int] = {SYSTEM_REDIS_PORT}

    def free_port(self) -> int:
        """A free loopback port, distinct from every port handed out in this run and from 6379."""
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cpus: str | None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> Child:
        log = self.log_dir / f"{name}.log"
        full = self.pinning.wrap(argv, cpus)
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(full)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                full,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        child = Child(name, full, proc, log, port)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> None:
        if child in self.children:
            self.children.remove(child)
        if child.proc.poll() is None:
            _signal_group(child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(grace)
        # Leftover group members (workers whose parent already exited) go too.
        _signal_group(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(grace)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def wait_ready(self, child: Child, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StartupError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
            if check():
                return
            time.sleep(0.05)
        raise StartupError(f"{child.name} not ready after {timeout:.0f}s:\n{child.log_tail()}")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def terminating_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit, and make SIGINT raise KeyboardInterrupt even when the
    parent shell ignored it (background jobs), so `finally` blocks run and children are stopped."""

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- readiness checks


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_ok(port: int, path: str = "/healthz") -> Callable[[], bool]:
    def check() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    return check


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One RESP command to OUR redis (never the system one); returns the raw reply line."""
    if port == SYSTEM_REDIS_PORT:
        raise ValueError("refusing to talk to the system Redis on 6379")
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return s.recv(4096)


def redis_ready(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return redis_command(port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    return check


def python_cmd() -> str:
    return sys.executable
