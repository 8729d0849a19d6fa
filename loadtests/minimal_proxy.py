"""Reference floor: the least a Python aiohttp proxy can do per request.

Reads the body, parses and re-serializes it with orjson (every real gateway
parses the request), forwards it over a pooled ClientSession and returns the
answer; streams are passed through chunk by chunk. No auth, no policy, no
metering: the gateway's throughput is reported as a fraction of this one's.

    python loadtests/minimal_proxy.py --port 8090 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

FORWARDED = ("Content-Type", "Authorization")


async def proxy(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    session: ClientSession = request.app["session"]
    headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
    url = request.app["upstream"] + request.path_qs
    async with session.post(url, data=orjson.dumps(body), headers=headers) as upstream:
        if not body.get("stream"):
            payload = await upstream.read()
            return web.Response(body=payload, status=upstream.status, content_type=upstream.content_type)
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(host: str, port: int, upstream: str) -> None:
    app = web.Application()
    connector = TCPConnector(limit=0, keepalive_timeout=300, ttl_dns_cache=None)
    app["session"] = ClientSession(connector=connector, timeout=ClientTimeout(total=300))
    app["upstream"] = upstream.rstrip("/")
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await app["session"].close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Minimal aiohttp pass-through proxy (reference floor).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin, e.g. http://127.0.0.1:9100")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
