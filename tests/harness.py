"""Real processes on loopback for the integration and e2e tests: redis-server, the mock provider,
gateways. Every process is started by the test that needs it, on a free port, and stopped after;
no test ever touches a Redis it did not start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PRICES = ROOT / "policies" / "prices.yaml"
ADMIN_TOKEN = "test-admin-token"
PROVIDER_SECRET = "provider-secret-never-forwarded-from-clients"
# The mock provider is steered per request through x-mock-* headers; tests let them through.
MOCK_CONTROL = ["x-mock-*"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{out[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class Proc:
    """A child process in its own process group, with its output kept in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        return self.popen.returncode


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: the integration tests need a real Redis "
                "(apt-get install redis-server)"
            )
        self.port = free_port()
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            tmp / "redis.log",
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start:\n" + self.proc.log())

    def restart(self) -> None:
        self.proc.stop()
        binary = shutil.which("redis-server")
        assert binary
        self.proc = Proc(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            self.dir / "redis.log",
        )
        self._wait()

    def stop(self) -> None:
        self.proc.stop()


class MockProvider:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.served_log = tmp / f"served-{self.port}.log"
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "gateway",
                "mock-upstream",
                "--port",
                str(self.port),
                "--served-log",
                str(self.served_log),
                *extra,
            ],
            tmp / f"mock-{self.port}.log",
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/_mock/stats", proc=self.proc.popen)

    def served_ids(self) -> list[str]:
        if not self.served_log.exists():
            return []
        return [line for line in self.served_log.read_text().splitlines() if line]

    def stop(self) -> None:
        self.proc.stop()


def base_config(mock_url: str, **overrides: Any) -> dict[str, Any]:
    """A complete gateway.yaml as a dict, pointing at a running mock provider."""
    cfg: dict[str, Any] = {
        "version": 1,
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "timeouts": {"connect_s": 2, "first_byte_s": 10, "idle_s": 10, "total_s": 20},
        },
        "store": {"backend": "memory", "state_dir": "state"},
        "prices": str(PRICES),
        "providers": {
            "mock-openai": {
                "type": "openai",
                "base_url": f"{mock_url}/v1",
                "api_key": PROVIDER_SECRET,
                "forward_headers": MOCK_CONTROL,
            },
            "mock-anthropic": {
                "type": "anthropic",
                "base_url": mock_url,
                "api_key": PROVIDER_SECRET,
                "forward_headers": MOCK_CONTROL,
            },
            "mock-azure": {
                "type": "azure",
                "base_url": mock_url,
                "api_key": PROVIDER_SECRET,
                "api_version": "2024-10-21",
                "forward_headers": MOCK_CONTROL,
            },
        },
        "models": {
            "gpt-4o": {"deployments": [{"provider": "mock-openai", "model": "mock-gpt"}]},
            "gpt-4o-mini": {"deployments": [{"provider": "mock-openai", "model": "mock-gpt-mini"}]},
            "claude-sonnet": {"deployments": [{"provider": "mock-anthropic", "model": "mock-claude"}]},
            "azure-gpt": {
                "deployments": [{"provider": "mock-azure", "model": "mock-gpt", "price": "mock-gpt"}]
            },
            "text-embedding-3-small": {
                "operation": "embeddings",
                "deployments": [{"provider": "mock-openai", "model": "mock-embed"}],
            },
            "gpt-3.5-turbo-instruct": {
                "operation": "text_completion",
                "deployments": [{"provider": "mock-openai", "model": "mock-gpt-mini"}],
            },
        },
        "teams": {
            "demo": {"keys": [{"id": "demo", "key": "sk-demo"}], "cache": {"mode": "off"}},
            "other": {"models": ["gpt-4o-mini"], "keys": [{"id": "other", "key": "sk-other"}]},
        },
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def write_config(tmp: Path, cfg: dict[str, Any], name: str = "gateway.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class GatewayProc:
    def __init__(
        self,
        config_path: Path,
        *,
        redis_url: str | None = None,
        workers: int = 1,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.config_path = config_path
        extra_env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_LOG_LEVEL": "INFO", **(env or {})}
        if redis_url:
            extra_env["GATEWAY_REDIS_URL"] = redis_url
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            config_path.parent / f"gateway-{self.port}.log",
            env=extra_env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/readyz", proc=self.proc.popen)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.proc.stop(sig)

    def kill9(self) -> None:
        self.proc.kill9()


@contextlib.contextmanager
def gateway(config_path: Path, **kwargs: Any) -> Iterator[GatewayProc]:
    proc = GatewayProc(config_path, **kwargs)
    try:
        yield proc
    finally:
        proc.stop()


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """A plain blocking HTTP call (tests only): (status, parsed JSON or text, lower-cased headers)."""
    import orjson

    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, hdrs = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, exc.headers
    lowered = {k.lower(): v for k, v in hdrs.items()}
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = raw.decode(errors="replace")
    return status, parsed, lowered


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy (and return that), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
