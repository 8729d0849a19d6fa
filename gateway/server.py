"""App factory, process lifecycle, multi-worker serving and graceful shutdown.

Connections start in the lean front (``http/front.py``), which serves plain LLM requests itself and
hands any other connection to aiohttp's server, which runs the app built here.

``--workers N`` starts N processes that each bind the same port with SO_REUSEPORT (the kernel
spreads connections across them) and share state through Redis; metrics aggregate across
workers through prometheus-client's multiprocess mode. SIGTERM: stop accepting, let in-flight
requests and streams finish up to ``server.shutdown_grace_s``, flush settlements and the ledger,
exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from gateway.config.load import load_config
from gateway.config.runtime import Config
from gateway.config.yamlsource import ConfigError
from gateway.core import Gateway
from gateway.http.admin import add_admin_routes
from gateway.http.front import Front, FrontSite
from gateway.http.proxy import GATEWAY
from gateway.http.routes import add_routes, not_found

log = logging.getLogger("gateway.server")


def make_app(gateway: Gateway, watch: bool = True) -> web.Application:
    # The body limit is enforced by the handlers (with a 413 in the caller's format), not by aiohttp.
    app = web.Application(client_max_size=1 << 40)
    app[GATEWAY] = gateway
    add_routes(app)
    add_admin_routes(app)
    # Last: anything else (unknown path, or a known path with the wrong method) gets a 404 in the
    # caller's format. A route, not a middleware: middlewares cost every request a wrapper call.
    app.router.add_route("*", "/{tail:.*}", not_found)

    async def on_startup(app: web.Application) -> None:
        await gateway.start(watch=watch)

    async def on_cleanup(app: web.Application) -> None:
        await gateway.close(gateway.config.source.server.shutdown_grace_s)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(config: Config, host: str, port: int, reuse_port: bool) -> None:
    mock_runner = None
    if config.source.server.mock_upstream:
        from gateway.mock_upstream import MockConfig, start_mock

        mock_runner, mock_port = await start_mock(
            MockConfig(host="127.0.0.1", port=config.source.server.mock_upstream_port)
        )
        log.info("mock provider listening", extra={"url": f"http://127.0.0.1:{mock_port}"})
    gateway = Gateway(config)
    app = make_app(gateway)
    front = Front(gateway)
    grace = config.source.server.shutdown_grace_s
    # handler_cancellation: a client that disconnects cancels its handler at once, which closes the
    # upstream request instead of letting it run (and bill) to the end; the pipeline settles it.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=grace,
        handler_cancellation=True,
    )

    async def drain(app: web.Application) -> None:
        # runner.cleanup calls this after the site stops accepting: the front's connections and those
        # aiohttp serves drain side by side, within one grace period (aiohttp's own pass then finds
        # nothing left). Then on_cleanup flushes settlements and the ledger.
        assert runner.server is not None
        await asyncio.gather(front.shutdown(grace), runner.server.shutdown(grace))

    app.on_shutdown.append(drain)
    await runner.setup()
    site = FrontSite(runner, front, host, port, reuse_port=reuse_port or None, backlog=2048)
    await site.start()
    # Everything built so far (modules, config, rules, encodings, pools) is long-lived: freezing it keeps
    # every full collection from walking it again. Measured: full collections under load paused the loop
    # ~84 ms over ~114,000 objects; now they walk the request garbage alone (loadtests/RESULTS.md). A
    # frozen object is still freed when its last reference goes (a config replaced by a reload).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    log.info(
        "gateway listening",
        extra={
            "url": f"http://{host}:{port}",
            "store": gateway.store.name,
            "pid": os.getpid(),
            "event_loop": type(loop).__module__.partition(".")[0],  # "uvloop" or "asyncio"
        },
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight requests", extra={"pid": os.getpid()})
    await runner.cleanup()
    if mock_runner is not None:
        await mock_runner.cleanup()


def _worker(config_path: str, host: str, port: int, reuse_port: bool) -> None:
    from gateway.observability.logging import setup

    setup(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    _install_uvloop()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        raise SystemExit(2) from None
    asyncio.run(_serve(config, host, port, reuse_port))


def serve(config_path: str, host: str | None, port: int | None, workers: int | None) -> int:
    config = load_config(config_path)  # fail fast, with file:line errors, before forking
    server = config.source.server
    host, port = host or server.host, port if port is not None else server.port
    workers = workers or server.workers
    if workers == 1:
        _worker(config_path, host, port, False)
        return 0
    if config.source.store.backend != "redis" and not (
        os.environ.get("GATEWAY_REDIS_URL") or config.source.store.redis_url
    ):
        print(
            "--workers > 1 needs the Redis store (the embedded store is single-process); "
            "set GATEWAY_REDIS_URL or store.backend: redis",
            file=sys.stderr,
        )
        return 2
    return _supervise(config_path, host, port, workers)


def _supervise(config_path: str, host: str, port: int, workers: int) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(config_path, host, port, True), name=f"gateway-worker-{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for p in procs:
        p.join()
        code = code or (p.exitcode or 0)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def default_config_path() -> str:
    return os.environ.get("GATEWAY_CONFIG") or str(Path("policies") / "gateway.yaml")
