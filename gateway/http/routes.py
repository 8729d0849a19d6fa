"""Route table: the OpenAI and Anthropic surfaces, health, readiness and metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import jsonutil
from gateway.errors import GatewayError, NotFound
from gateway.http.proxy import GATEWAY, api_key_of, error_response, handle_aiohttp, request_id_of

# The LLM endpoints: path -> (wire format, operation). The lean front (front.py) serves plain requests
# to these paths itself; aiohttp serves the rest through the same handler.
LLM_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "text_completion"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/v1/messages": ("anthropic", "chat"),
}


def _llm_handler(wire: str, operation: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await handle_aiohttp(request, wire, operation)

    return handler


async def list_models(request: web.Request) -> web.Response:
    """Only the models the caller's team may use (OpenAI shape; Anthropic SDKs send anthropic-version)."""
    gateway = request.app[GATEWAY]
    wire = "anthropic" if "anthropic-version" in request.headers else "openai"
    request_id = request_id_of(request)
    try:
        principal = await gateway.auth.authenticate(api_key_of(request.headers))
    except GatewayError as err:
        return error_response(err, wire, request_id)
    created = int(time.time())
    names = sorted(m for m in gateway.config.models if principal.team.may_use(m))
    if wire == "anthropic":
        data = [
            {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"} for n in names
        ]
        body = {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    else:
        body = {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "gateway"} for n in names],
        }
    return web.Response(
        body=jsonutil.dumps(body), content_type="application/json", headers={"x-request-id": request_id}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    store_ok = await gateway.store.ping()
    ready = gateway.ready
    body = {"ready": ready, "store": gateway.store.name, "store_ok": store_ok}
    # A down Redis does not make the gateway unready: it keeps serving (fail_open teams, cache misses).
    return web.Response(
        status=200 if ready else 503, body=jsonutil.dumps(body), content_type="application/json"
    )


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    gateway.publish_metrics()  # this worker's counts are exact at the scrape; others' are a second old
    data, content_type = gateway.metrics.render()
    return web.Response(body=data, headers={"content-type": content_type})


async def not_found(request: web.Request) -> web.Response:
    # Anthropic SDKs always send anthropic-version; a hand-made call to /v1/messages may not.
    anthropic = "anthropic-version" in request.headers or request.path.startswith("/v1/messages")
    wire = "anthropic" if anthropic else "openai"
    return error_response(
        NotFound(f"unknown endpoint {request.method} {request.path}"), wire, request_id_of(request)
    )


def add_routes(app: web.Application) -> None:
    for path, (wire, operation) in LLM_ROUTES.items():
        app.router.add_post(path, _llm_handler(wire, operation))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
