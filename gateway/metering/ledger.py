"""The ledger record: one per request, the unit of showback, chargeback and every report.

Fields (all present in every record):
    request_id (the gateway's, unique), client_request_id (the caller's x-request-id, if any), ts_ms, team,
    key_id, tags, operation, inbound, stream,
    requested_model, served_model (logical), upstream_model, provider, deployment, route,
    cache ("hit" | "miss" | "bypass"), status (HTTP status, or "expired" for a lease charged in full),
    usage {input_tokens, cached_input_tokens, cache_creation_input_tokens, output_tokens, reasoning_tokens},
    cost_nano (what was paid), counterfactual_nano (what the requested model would have cost for the
    same usage; for a cache hit, what the cached answer cost when it was made), latency_ms, estimated.
The reservation carries the first half of the record (``intent``) as a write-ahead entry, so a
request whose process dies still lands in the ledger, charged at its reservation, marked estimated.
"""

from __future__ import annotations

from typing import Any

from gateway.metering.pricing import Rates, cost_nano
from gateway.metering.usage import Usage


def intent(
    *,
    request_id: str,
    client_request_id: str | None = None,
    ts_ms: int,
    team: str,
    key_id: str,
    tags: dict[str, str],
    operation: str,
    inbound: str,
    stream: bool,
    requested_model: str,
    route: str,
    planned_model: str,
    provider: str,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "client_request_id": client_request_id,
        "ts_ms": ts_ms,
        "team": team,
        "key_id": key_id,
        "tags": tags,
        "operation": operation,
        "inbound": inbound,
        "stream": stream,
        "requested_model": requested_model,
        "served_model": planned_model,
        "upstream_model": "",
        "provider": provider,
        "deployment": "",
        "route": route,
        "cache": "miss",
        "status": "in_flight",
        "usage": {},
        "cost_nano": 0,
        "counterfactual_nano": 0,
        "latency_ms": 0,
        "estimated": True,
    }


def complete(
    skeleton: dict[str, Any],
    *,
    served_model: str,
    upstream_model: str,
    provider: str,
    deployment: str,
    cache: str,
    status: int,
    usage: Usage,
    cost: int,
    counterfactual: int,
    latency_ms: float,
) -> dict[str, Any]:
    record = dict(skeleton)
    record.update(
        served_model=served_model,
        upstream_model=upstream_model,
        provider=provider,
        deployment=deployment,
        cache=cache,
        status=status,
        usage={k: v for k, v in usage.as_dict().items() if k != "estimated"},
        cost_nano=cost,
        counterfactual_nano=counterfactual,
        latency_ms=round(latency_ms, 3),
        estimated=usage.estimated,
    )
    return record


def counterfactual_cost(usage: Usage, requested: Rates | None, paid: int) -> int:
    """What the requested model would have cost for this usage (``paid`` when it has no price)."""
    return paid if requested is None else cost_nano(usage, requested)
