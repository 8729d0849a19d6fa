"""Admin API: virtual keys, budgets, spend reports, policy reload.

Authenticated with ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN`` (the variable named by
``server.admin_token_env``); every admin route answers 404 while that variable is unset, so
an unconfigured gateway exposes no admin surface at all.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway import jsonutil
from gateway.auth import key_digest, new_key
from gateway.budget import scopes_for
from gateway.config.runtime import UNLIMITED, Principal
from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest, NotFound, StoreUnavailable
from gateway.http.proxy import GATEWAY, AiohttpExchange, error_response, read_json, request_id_of
from gateway.metering import report
from gateway.metering.pricing import nano_to_usd_str
from gateway.periods import period_bounds
from gateway.store.base import KeyRecord, ScopeLimit, StoreError

Handler = Any
log = logging.getLogger("gateway.admin")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps(data), content_type="application/json")


def admin(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        request_id = request_id_of(request)
        token = os.environ.get(gateway.config.source.server.admin_token_env, "")
        try:
            if not token:
                raise NotFound("the admin API is disabled (set GATEWAY_ADMIN_TOKEN to enable it)")
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise AuthenticationFailed("invalid admin token")
            response: web.StreamResponse = await handler(request)
            return response
        except GatewayError as err:
            return error_response(err, "openai", request_id)
        except StoreError as exc:
            return error_response(StoreUnavailable(f"store unavailable: {exc}"), "openai", request_id)
        except Exception:  # a bug answers in the API's error shape, never with aiohttp's plain-text 500
            log.exception("unexpected error in the admin API", extra={"request_id": request_id})
            return error_response(GatewayError("internal gateway error"), "openai", request_id)

    return wrapped


@admin
async def create_key(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    body, _ = await read_json(AiohttpExchange(request), 64 * 1024)
    team, name = body.get("team"), body.get("name", "")
    if not isinstance(team, str) or team not in gateway.config.teams:
        raise InvalidRequest(f"unknown team {team!r}", param="team")
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidRequest("`name` must be a string of at most 200 characters", param="name")
    key = new_key()
    record = KeyRecord(
        key_id="key_" + key_digest(key)[:16],
        team=team,
        sha256=key_digest(key),
        name=name,
        created_ms=int(time.time() * 1000),
    )
    await gateway.store.create_key(record)
    return _json({**record.public(), "key": key}, status=201)


@admin
async def list_keys(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    _, revoked = await gateway.store.revocations()
    configured = [
        {"id": p.key_id, "team": p.team.name, "name": p.name, "source": "config"}
        for p in gateway.config.keys.values()
        if p.key_id not in revoked
    ]
    dynamic = [k.public() for k in await gateway.store.list_keys()]
    return _json({"data": configured + dynamic})


@admin
async def revoke_key(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    key_id = request.match_info["key_id"]
    # Check before revoking: the store revokes any id it is given, and a mistyped id would lie in
    # wait for a YAML key declared later under that name.
    _, revoked = await gateway.store.revocations()
    known = (
        key_id in revoked
        or any(p.key_id == key_id for p in gateway.config.keys.values())
        or any(k.key_id == key_id for k in await gateway.store.list_keys())
    )
    if not known:
        raise NotFound(f"no key with id {key_id!r}")
    await gateway.store.revoke_key(key_id)
    gateway.auth.revoke_locally(key_id)
    return _json({"id": key_id, "revoked": True})


def _scope_view(scope: ScopeLimit, usage: Any, period: str, now: datetime) -> dict[str, Any]:
    _, start, end = period_bounds(period, now)
    limit = scope.usd_limit_nano
    used = usage.spent_nano + usage.reserved_nano
    return {
        "scope": scope.scope,
        "period": period,
        "period_id": scope.period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "limit_usd": None if limit == UNLIMITED else nano_to_usd_str(limit),
        "spent_usd": nano_to_usd_str(usage.spent_nano),
        "reserved_usd": nano_to_usd_str(usage.reserved_nano),
        "remaining_usd": None if limit == UNLIMITED else nano_to_usd_str(max(0, limit - used)),
        "limit_tokens": None if scope.token_limit == UNLIMITED else scope.token_limit,
        "spent_tokens": usage.spent_tokens,
        "reserved_tokens": usage.reserved_tokens,
        "remaining_tokens": None
        if scope.token_limit == UNLIMITED
        else max(0, scope.token_limit - usage.spent_tokens - usage.reserved_tokens),
        "requests": usage.requests,
        "denials": usage.denials,
    }


@admin
async def budgets(request: web.Request) -> web.Response:
    """Per team and per key: limit, spent, reserved, remaining, period bounds, denials."""
    gateway = request.app[GATEWAY]
    now = datetime.now(UTC)
    out = []
    principals: dict[str, list[Principal]] = {}
    for p in gateway.config.keys.values():
        principals.setdefault(p.team.name, []).append(p)
    for team in gateway.config.teams.values():
        scopes: list[tuple[ScopeLimit, str]] = []
        probe = Principal(key_id="-", team=team)
        if team.budget:
            scopes += [(s, team.budget.period) for s in scopes_for(probe, now)]
        for p in principals.get(team.name, []):
            if p.budget:
                scopes += [(s, p.budget.period) for s in scopes_for(p, now) if s.scope.startswith("key:")]
        usage = await gateway.store.scope_usage(team.name, [s for s, _ in scopes]) if scopes else {}
        out.append(
            {
                "team": team.name,
                "on_store_error": team.on_store_error,
                "rate_limits": {"rpm": team.rpm, "tpm": team.tpm},
                "scopes": [_scope_view(s, usage[s.counter], period, now) for s, period in scopes],
            }
        )
    return _json({"data": out, "store": gateway.store.name})


async def _records(request: web.Request) -> tuple[list[dict[str, Any]], int, int]:
    gateway = request.app[GATEWAY]
    q = request.query
    since_s = q.get("since") or datetime.now(UTC).strftime("%Y-%m-01")
    # ``until`` is exclusive: the default is a millisecond past now, so this second's records count too.
    until_s = q.get("until") or (datetime.now(UTC) + timedelta(milliseconds=1)).isoformat()
    try:
        since, until = report.parse_since_until(since_s, until_s)
    except report.TimeWindowError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None
    teams = [t for t in q.get("team", "").split(",") if t] or sorted(
        set(gateway.config.teams) | set(await gateway.store.teams())
    )
    records: list[dict[str, Any]] = []
    for team in teams:
        records += await gateway.store.ledger(team, since, until)
    return records, since, until


@admin
async def spend(request: web.Request) -> web.Response:
    """GET /admin/spend?since=2026-11-01&until=2026-12-01&by=team,model&format=json|csv|focus|table"""
    records, _, _ = await _records(request)
    by = [b for b in request.query.get("by", "team,model").split(",") if b]
    fmt = request.query.get("format", "json")
    try:
        if fmt == "focus":
            return web.Response(text=report.render_focus_csv(records), content_type="text/csv")
        rows = report.aggregate(records, by)
        if fmt == "csv":
            return web.Response(text=report.render_csv(rows, by), content_type="text/csv")
        if fmt == "table":
            return web.Response(text=report.render_table(rows, by), content_type="text/plain")
        if fmt != "json":
            raise InvalidRequest("`format` must be json, csv, table or focus", param="format")
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="by") from None
    body = report.render_json(rows, report.totals(records))
    return web.Response(text=body, content_type="application/json")


@admin
async def reload_policy(request: web.Request) -> web.Response:
    ok, problems = await request.app[GATEWAY].reload()
    if not ok:
        raise InvalidRequest("policy rejected; the previous policy stays active:\n" + "\n".join(problems))
    return _json({"reloaded": True})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)
    app.router.add_get("/admin/budgets", budgets)
    app.router.add_get("/admin/spend", spend)
    app.router.add_post("/admin/reload", reload_policy)
