"""The hot path: one request through the stages, top to bottom.

    authenticate -> admit (model exists, team may use it) -> tag -> route (policy rules)
      -> cache lookup -> reserve budget -> dispatch upstream (retries, fallbacks)
      -> relay (stream or body, metering as it passes) -> settle + ledger + cache write (off the path)

Each stage is a small method over one ``RequestContext``; the concerns themselves live in their
own modules (auth, policy, budget, cache, metering, providers, store). Nothing here imports the
HTTP server: the edge turns a ``Reply`` or ``StreamReply`` into a response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from gateway.auth import Authenticator
from gateway.budget import Ask, BudgetManager, Reservation
from gateway.cache import CacheDecision, ResponseCache, cache_key, decide
from gateway.cache_codec import CacheEntry, replay_body, replay_stream
from gateway.config.runtime import Config, DeploymentSpec, ModelSpec, Principal, highest_rates
from gateway.dispatch import Dispatched, Dispatcher
from gateway.errors import BudgetExceeded, GatewayError, ModelNotFound, PolicyDenied
from gateway.metering import ledger
from gateway.metering.pricing import Rates, cost_nano, nano_to_usd_str
from gateway.metering.tokens import (
    TokenCounter,
    byte_upper_bound_text,
    chat_outside_walk_bound,
    chat_prompt_bound,
)
from gateway.metering.usage import Usage
from gateway.observability.metrics import Metrics, status_class
from gateway.policy.engine import Decision, Facts
from gateway.providers.base import Timeouts, forwarded_headers
from gateway.providers.relay import StreamRelay, convert_body, error_event, stream_relay
from gateway.providers.translate import UpstreamStreamError
from gateway.request_body import (
    asks_stream_usage,
    body_texts,
    choices,
    client_max_tokens,
    has_images,
    last_user_text,
    output_cap_fields,
)
from gateway.store.base import CacheProbe
from gateway.tagging import extract as extract_tags
from gateway.tasks import TaskGroup

log = logging.getLogger("gateway.request")


@dataclass(slots=True)
class RequestContext:
    request_id: str  # the gateway's own, unique: keys the lease and the ledger record
    inbound: str  # the client's wire format: "openai" | "anthropic"
    operation: str  # chat | text_completion | embeddings
    body: dict[str, Any]
    headers: Mapping[str, str]  # lower-case names
    api_key: str | None
    client_request_id: str | None = None
    started: float = field(default_factory=time.perf_counter)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    principal: Principal | None = None
    stream: bool = False
    client_wants_usage: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    requested_model: str = ""
    decision: Decision | None = None
    route: str = "-"
    served: DeploymentSpec | None = None
    cache: str = "bypass"
    cache_age_s: int | None = None
    reservation: Reservation | None = None
    cost_nano: int | None = None
    upstream_s: float = 0.0
    ttft_s: float | None = None
    status: int = 200
    error: str = ""
    prompt_bound: int = 0
    forwarded: bool = False
    intent: dict[str, Any] | None = None  # the ledger record's first half, built once at the reservation
    cache_key: str = ""  # the lookup's key, for cache_model; a fallback's answer gets its own
    cache_model: str = ""
    cache_vary: dict[str, str] | None = None  # forwarded client headers: part of the cache key
    cache_lead: tuple[str, str] | None = None  # (namespace, key) this request leads for its peers
    # ``body`` re-encoded by the edge (never the client's raw bytes: a duplicate key would let the
    # upstream read another model or cap than the gateway checked). Sent as-is when nothing changes.
    encoded_body: bytes = b""


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    # The bookkeeping the answer does not depend on (settle, ledger, cache fill, metrics). The edge runs
    # it once the response is written, so the client never waits for it, and runs it whatever happens
    # to the write: the reservation is settled on every path.
    after: Callable[[], None] | None = None

    def finish(self) -> None:
        after, self.after = self.after, None
        if after is not None:
            after()


@dataclass(slots=True)
class StreamReply:
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]


def max_rates(models: list[ModelSpec]) -> Rates:
    """Element-wise maximum over every deployment the request may land on: a strict bound."""
    if len(models) == 1:
        return models[0].max_rates
    return highest_rates([m.max_rates for m in models])


class Pipeline:
    def __init__(
        self,
        *,
        config: Config,
        auth: Authenticator,
        budget: BudgetManager,
        cache: ResponseCache,
        dispatcher: Dispatcher,
        counter: TokenCounter,
        metrics: Metrics,
        tasks: TaskGroup,
    ) -> None:
        self.config = config
        self.auth = auth
        self.budget = budget
        self.cache = cache
        self.dispatcher = dispatcher
        self.counter = counter
        self.metrics = metrics
        self.tasks = tasks

    # ------------------------------------------------------------------ the stages

    async def handle(self, ctx: RequestContext) -> Reply | StreamReply:
        cfg = self.config  # one snapshot per request: a reload never changes a request midway
        ctx.principal = await self.auth.authenticate(ctx.api_key)
        chain = self._admit_and_route(ctx, cfg)
        decision = self._cache_decision(ctx)
        try:  # the lookup may make this request the leader of its key: every exit must end that
            probe = None
            if decision is not None:
                hit, probe = await self._cache_prepare(ctx, decision, chain[0])
                if hit is not None:
                    return hit
            # One store operation: the cache entry if there is one, otherwise the reservation.
            raw = await self._reserve(ctx, cfg, chain, probe)
            if raw is not None:
                entry = self.cache.decode(raw)
                if entry is not None:
                    return self._serve_hit(ctx, entry, chain[0])
                await self._reserve(ctx, cfg, chain, None)  # an unreadable entry is a miss
            elif decision is not None and probe is not None and probe.lock_ms > 0 and not probe.locked:
                # Another replica is filling this entry: wait (bounded) for it rather than pay twice.
                entry = await self.cache.wait_for_entry(decision.namespace, probe.key)
                if entry is not None:
                    return self._serve_hit(ctx, entry, chain[0])
            result = await self._forward(ctx, cfg, chain, decision)
        except BaseException as exc:
            self._end_lead(ctx)
            if ctx.reservation is not None and not ctx.forwarded:  # nothing reached a provider: $0
                self._release(ctx, time.perf_counter(), _failure_status(exc), upstream=False)
            raise
        return result  # a Reply's bookkeeping, or a stream's end, ends its cache lead

    def _end_lead(self, ctx: RequestContext) -> None:
        """Wake identical requests waiting on this one (with nothing, if it failed) and drop the lock."""
        if ctx.cache_lead is None:
            return
        namespace, key = ctx.cache_lead
        ctx.cache_lead = None
        self.cache.finish(key, None)
        self.tasks.spawn(self.cache.release(namespace, key), name="cache-unlock")

    def _admit_and_route(self, ctx: RequestContext, cfg: Config) -> list[ModelSpec]:
        assert ctx.principal is not None
        team = ctx.principal.team
        ctx.requested_model = str(ctx.body.get("model", ""))
        ctx.stream = ctx.body.get("stream") is True
        ctx.client_wants_usage = asks_stream_usage(ctx.body)
        # The allow-list applies to what the team asks for; where the platform's rules then route it is
        # the platform's decision. An alias only a rule resolves (`auto`) is a valid name too.
        unknown = ModelNotFound(
            f"the model `{ctx.requested_model}` does not exist or you do not have access to it", param="model"
        )
        if not team.may_use(ctx.requested_model):
            raise unknown
        ctx.tags = extract_tags(team.tags, ctx.body, ctx.headers.get("x-gateway-tags"), cfg.source.tags)
        decision = cfg.rules.decide(self._facts(ctx, cfg))
        if ctx.requested_model not in cfg.models and decision.rule == "default":
            raise unknown
        ctx.decision, ctx.route = decision, decision.rule
        for key, value in decision.add_tags:
            ctx.tags[key] = value
        if decision.deny is not None:
            raise PolicyDenied(decision.deny)
        chain = [cfg.models[m] for m in decision.chain if m in cfg.models]
        chain = [m for m in chain if m.operation == ctx.operation] or chain
        if not chain:
            raise ModelNotFound(f"the model `{ctx.requested_model}` has no route", param="model")
        if chain[0].operation != ctx.operation:
            raise ModelNotFound(
                f"the model `{chain[0].name}` does not support {ctx.operation}", param="model"
            )
        return chain

    def _facts(self, ctx: RequestContext, cfg: Config) -> Facts:
        assert ctx.principal is not None
        body = ctx.body
        model = cfg.models.get(ctx.requested_model)
        return Facts(
            team=ctx.principal.team.name,
            model=ctx.requested_model,
            operation=ctx.operation,
            tags=ctx.tags,
            max_tokens=client_max_tokens(body, ctx.inbound),
            has_tools=bool(body.get("tools")),
            has_images=has_images(body),
            has_response_format=body.get("response_format") is not None,
            stream=ctx.stream,
            budget_used=self.budget.utilization.get(ctx.principal.team.name, 0.0),
            now=datetime.now(UTC),
            prompt_tokens_fn=lambda: self._exact_prompt_tokens(
                ctx, model.deployments[0].upstream_model if model else ctx.requested_model
            ),
            prompt_text_fn=lambda: last_user_text(body),
        )

    # ------------------------------------------------------------------ tokens

    def _prompt_bound(self, ctx: RequestContext) -> int:
        """Strict upper bound on prompt tokens without tokenizing (one token covers >= one byte)."""
        if not ctx.prompt_bound:
            body = ctx.body
            if ctx.operation == "chat":
                bound = chat_prompt_bound(body)
            else:
                bound = byte_upper_bound_text(
                    body.get("prompt") if ctx.operation == "text_completion" else body.get("input")
                )
            ctx.prompt_bound = bound
        return ctx.prompt_bound

    def _exact_prompt_bound(self, ctx: RequestContext, model: str) -> int:
        """The exact count of what the tokenizer walk sees, plus a byte bound of what it does not (a
        schema, Anthropic's system): strict, so it may replace the byte bound for a reservation."""
        exact = self._exact_prompt_tokens(ctx, model)
        return exact + chat_outside_walk_bound(ctx.body) if ctx.operation == "chat" else exact

    def _exact_prompt_tokens(self, ctx: RequestContext, model: str) -> int:
        body = ctx.body
        if ctx.operation == "chat":
            return self.counter.count_chat(body.get("messages"), model, body.get("tools"))
        return self.counter.count_input(
            body.get("prompt") if ctx.operation == "text_completion" else body.get("input"), model
        )

    def _exact_is_strict(self, chain: list[ModelSpec]) -> bool:
        """An exact count may replace the byte bound only if every candidate uses that same tokenizer."""
        return all(self.counter.is_exact(d.upstream_model) for m in chain for d in m.deployments)

    # ------------------------------------------------------------------ cache

    def _cache_decision(self, ctx: RequestContext) -> CacheDecision | None:
        assert ctx.principal is not None and ctx.decision is not None
        decision = decide(ctx.principal.team.cache, ctx.decision.cache, ctx.body, ctx.operation, ctx.headers)
        if not decision.read and not decision.write:
            ctx.cache = "bypass"
            return None
        return decision

    async def _cache_prepare(
        self, ctx: RequestContext, decision: CacheDecision, model: ModelSpec
    ) -> tuple[Reply | StreamReply | None, CacheProbe | None]:
        """Identical requests in this process wait for the first one (no store call at all); the
        first one leads, and its store probe travels with its reservation (one round trip)."""
        ctx.cache_vary = forwarded_headers(model.deployments[0].provider, ctx.headers)
        key = cache_key(decision.namespace, ctx.inbound, ctx.operation, model.name, ctx.body, ctx.cache_vary)
        ctx.cache, ctx.cache_key, ctx.cache_model = "miss", key, model.name
        if decision.read:
            leader = self.cache.follower_of(key)
            if leader is not None:
                entry = await self.cache.follow(leader)
                if entry is not None:
                    return self._serve_hit(ctx, entry, model), None
            else:
                self.cache.lead(key)
                ctx.cache_lead = (decision.namespace, key)
        return None, self.cache.probe(decision.namespace, key, decision.read, ctx.request_id)

    def _serve_hit(self, ctx: RequestContext, entry: CacheEntry, model: ModelSpec) -> Reply | StreamReply:
        assert ctx.principal is not None
        ctx.cache = "hit"
        ctx.cost_nano = 0
        ctx.cache_age_s = max(0, (int(time.time() * 1000) - entry.created_ms) // 1000)
        if ctx.cache_lead is not None:  # wake identical requests waiting in this process
            self.cache.finish(ctx.cache_lead[1], entry)
            ctx.cache_lead = None
        deployment = next(
            (d for d in model.deployments if d.logical == entry.served_model), model.deployments[0]
        )
        ctx.served = deployment
        headers = self._headers(ctx, deployment)
        book = partial(self._book_hit, ctx, deployment, entry)
        if ctx.stream:
            book()
            events = replay_stream(entry, ctx.client_wants_usage)
            return StreamReply(headers=headers, chunks=_iterate(events, _cost_comment(0)))
        return Reply(200, replay_body(entry), headers, after=book)

    def _book_hit(self, ctx: RequestContext, deployment: DeploymentSpec, entry: CacheEntry) -> None:
        assert ctx.principal is not None
        usage = Usage(**{k: v for k, v in entry.usage.items() if k in Usage.__slots__})
        # What the answer cost when it was made, on the deployment and at the prices that made it: the
        # model's first deployment may be priced differently (and prices change while entries live).
        saved = entry.cost_nano
        self.metrics.cache_requests.labels(ctx.principal.team.name, "hit").inc()
        self.metrics.savings.labels(ctx.principal.team.name, "cache").inc(saved / 1e9)
        record = self._record(ctx, deployment, usage, cost=0, counterfactual=saved, status=200)
        if ctx.reservation is not None:  # reserved before a peer's entry appeared: released at $0
            self.budget.submit(ctx.reservation, 0, 0, record)
        else:
            self.budget.submit_record(ctx.principal.team.name, record, 0, 0, [])
        self._observe(ctx, 200)

    # ------------------------------------------------------------------ budget

    async def _reserve(
        self, ctx: RequestContext, cfg: Config, chain: list[ModelSpec], probe: CacheProbe | None
    ) -> bytes | None:
        """Sets ``ctx.reservation``, or returns the cache entry the same store operation found.
        Up to three attempts; only the last (in ``_downgrade``) counts as the request's denial."""
        assert ctx.principal is not None
        out_max, flexible = self._output_bound(ctx, chain, self._capped_max_tokens(ctx))
        bound = self._prompt_bound(ctx)
        ask = self._ask(ctx, chain, bound, out_max, flexible)
        try:
            entry, ctx.reservation = await self.budget.admit(ctx.principal, ask, probe, final=False)
            return entry
        except BudgetExceeded:
            ctx.reservation = await self._reserve_again(ctx, cfg, chain, bound, out_max, flexible)
            return None
        finally:  # whatever the budget said (rate limits included), a lock this request took is its own
            if probe is not None and probe.locked:
                self.cache.owns(probe.key)
                if ctx.cache_lead is None:  # a follower whose leader gave up: it leads now, and releases
                    ctx.cache_lead = (probe.namespace, probe.key)

    async def _reserve_again(
        self,
        ctx: RequestContext,
        cfg: Config,
        chain: list[ModelSpec],
        bound: int,
        out_max: int,
        flexible: bool,
    ) -> Reservation:
        """The first attempt was denied on the byte bound: try the exact count, then the downgrade."""
        assert ctx.principal is not None
        # Only now is an exact count worth its cost: it may fit where the byte bound did not.
        if self._exact_is_strict(chain):
            exact = self._exact_prompt_bound(ctx, chain[0].deployments[0].upstream_model)
            if exact < bound:
                ctx.prompt_bound = exact
                try:
                    return await self.budget.reserve(
                        ctx.principal, self._ask(ctx, chain, exact, out_max, flexible), final=False
                    )
                except BudgetExceeded:
                    pass
        return await self._downgrade(ctx, cfg, chain)

    def _capped_max_tokens(self, ctx: RequestContext) -> int | None:
        """The client's max_tokens, lowered to a routing rule's cap (every attempt honours the cap)."""
        client_max = client_max_tokens(ctx.body, ctx.inbound)
        cap = ctx.decision.max_tokens_cap if ctx.decision else None
        if cap is not None:
            client_max = min(client_max, cap) if client_max is not None else cap
        return client_max

    async def _downgrade(self, ctx: RequestContext, cfg: Config, chain: list[ModelSpec]) -> Reservation:
        assert ctx.principal is not None
        # The team's action decides; a key-level `downgrade` applies when the team has none.
        spec = ctx.principal.team.budget
        key_spec = ctx.principal.budget
        team_downgrades = spec is not None and spec.action == "downgrade"
        if not team_downgrades and key_spec is not None and key_spec.action == "downgrade":
            spec = key_spec
        if (
            spec is None
            or spec.action != "downgrade"
            or spec.downgrade_to not in cfg.models
            or chain[0].name == spec.downgrade_to
        ):
            return await self.budget.reserve(
                ctx.principal,
                self._ask(
                    ctx,
                    chain,
                    ctx.prompt_bound,
                    *self._output_bound(ctx, chain, self._capped_max_tokens(ctx)),
                ),
            )
        target = cfg.models[spec.downgrade_to]
        chain[:] = [target]
        ctx.route = f"{ctx.route}+budget_downgrade"
        # An exact count made with the primary's tokenizer bounds nothing for another tokenizer:
        # start again from the byte bound, or count exactly with the target's own tokenizer.
        ctx.prompt_bound = 0
        ctx.prompt_bound = (
            self._exact_prompt_bound(ctx, target.deployments[0].upstream_model)
            if self._exact_is_strict(chain)
            else self._prompt_bound(ctx)
        )
        out_max, flexible = self._output_bound(ctx, chain, self._capped_max_tokens(ctx))
        return await self.budget.reserve(
            ctx.principal, self._ask(ctx, chain, ctx.prompt_bound, out_max, flexible)
        )

    def _output_bound(
        self, ctx: RequestContext, chain: list[ModelSpec], client_max: int | None
    ) -> tuple[int, bool]:
        """(output tokens to reserve for all choices, flexible). A client cap above what every model in
        the chain can produce is lowered to that (the provider would refuse it anyway)."""
        if ctx.operation == "embeddings":
            return 0, False
        model_max = max(m.max_output_tokens for m in chain)
        n = choices(ctx.body, ctx.inbound)
        if client_max is not None:
            return min(client_max, model_max) * n, False
        if ctx.operation == "text_completion":
            return 16 * n, False  # the API's documented default
        return model_max * n, True

    def _ask(
        self, ctx: RequestContext, chain: list[ModelSpec], prompt_tokens: int, out_max: int, flexible: bool
    ) -> Ask:
        assert ctx.principal is not None
        timeout_ms = int(self.config.source.server.timeouts.total_s * 1000)
        skeleton = ctx.intent = self._ask_intent(ctx, chain[0].name, chain[0].deployments[0].provider.system)
        return Ask(
            lease_id=ctx.request_id,
            prompt_tokens_bound=prompt_tokens,
            out_tokens_max=out_max,
            flexible=flexible,
            rates=max_rates(chain),
            intent=skeleton,
            lease_ttl_ms=timeout_ms + int(self.config.source.store.lease_grace_s * 1000),
            choices=choices(ctx.body, ctx.inbound),
        )

    # ------------------------------------------------------------------ upstream

    async def _forward(
        self, ctx: RequestContext, cfg: Config, chain: list[ModelSpec], cache: CacheDecision | None
    ) -> Reply | StreamReply:
        res = ctx.reservation
        assert res is not None and ctx.principal is not None
        ctx.forwarded = True  # from here on, _forward settles the reservation on every path
        t = cfg.source.server.timeouts
        timeouts = Timeouts(connect_s=t.connect_s, first_byte_s=t.first_byte_s, idle_s=t.idle_s)
        out_cap = res.out_tokens // choices(ctx.body, ctx.inbound)  # per choice
        body_cap = client_max_tokens(ctx.body, ctx.inbound)
        inject = ctx.operation != "embeddings" and (body_cap is None or out_cap < body_cap)

        def body_for(model: ModelSpec, deployment: DeploymentSpec) -> tuple[dict[str, Any], bytes | None]:
            if not inject:
                return ctx.body, ctx.encoded_body or None
            body = dict(ctx.body)
            cap = min(out_cap, deployment.max_output_tokens)
            for field_name in output_cap_fields(body, ctx.inbound):
                body[field_name] = cap
            return body, None

        upstream_started = time.perf_counter()
        try:
            sent = await self.dispatcher.dispatch(
                inbound=ctx.inbound,
                operation=ctx.operation,
                chain=chain,
                body_for=body_for,
                stream=ctx.stream,
                retry=cfg.source.routing.retry,
                timeouts=timeouts,
                deadline=time.monotonic() + t.total_s,
                fits=lambda model: self._fits(ctx, model),
                client_headers=ctx.headers,
                request_id=ctx.request_id,
            )
        except BaseException as exc:
            self._release(ctx, upstream_started, _failure_status(exc))
            raise
        ctx.served = sent.deployment
        if ctx.stream:
            return self._relay(ctx, sent, upstream_started, cache)
        return await self._finish_body(ctx, sent, upstream_started, cache)

    def _fits(self, ctx: RequestContext, model: ModelSpec) -> bool:
        """False only where the prompt provably overflows the model's window (the dispatcher then moves
        on without a call). Where it may fit, the provider decides: its context-length 400 moves on too."""
        bound = self._prompt_bound(ctx)
        if bound <= model.context_window:
            return True
        # The byte bound says it may not fit, and only an exact count can tell: 5-8 ms of CPU for 30k
        # tokens, on the event loop, for every long prompt with a unique part (RAG). Up to 1.5 bytes per
        # window token, only content denser than 0.67 tokens per byte (English runs ~0.25, CJK ~0.35)
        # overflows: those prompts are sent unchecked, and the rare one that overflows costs a
        # rejected call (providers do not bill a context-length 400) instead of every one paying.
        if bound <= model.context_window * _SEND_UNCOUNTED_BYTES_PER_TOKEN:
            return True
        if not self._exact_is_strict([model]):
            return True  # cannot prove it overflows: let the provider decide (and fall back on its 400)
        return self._exact_prompt_bound(ctx, model.deployments[0].upstream_model) <= model.context_window

    def _release(
        self, ctx: RequestContext, upstream_started: float, status: int, upstream: bool = True
    ) -> None:
        """No upstream answer: the reservation is released at $0 (nothing was served).

        ``status`` is what the client is answered, so the ledger's error counts match what callers saw.
        A client that went away (499) while the upstream was working is different: the provider may
        well bill the request, so it is charged its full reservation and marked estimated.
        """
        assert ctx.principal is not None and ctx.reservation is not None
        if status == 499 and upstream:
            self._charge_reservation(ctx, upstream_started)
            return
        ctx.upstream_s = time.perf_counter() - upstream_started
        chain_first = ctx.decision.chain[0] if ctx.decision and ctx.decision.chain else ctx.requested_model
        record = ledger.complete(
            self._ask_intent(ctx, chain_first),
            served_model=chain_first,
            upstream_model="",
            provider="",
            deployment="",
            cache=ctx.cache,
            status=status,
            usage=Usage(),
            cost=0,
            counterfactual=0,
            latency_ms=(time.perf_counter() - ctx.started) * 1000,
        )
        self.budget.submit(ctx.reservation, 0, 0, record)

    def _charge_reservation(self, ctx: RequestContext, upstream_started: float) -> None:
        res = ctx.reservation
        assert ctx.principal is not None and res is not None
        ctx.upstream_s = time.perf_counter() - upstream_started
        chain_first = ctx.decision.chain[0] if ctx.decision and ctx.decision.chain else ctx.requested_model
        record = ledger.complete(
            self._ask_intent(ctx, chain_first),
            served_model=chain_first,
            upstream_model="",
            provider="",
            deployment="",
            cache=ctx.cache,
            status=499,
            usage=Usage(estimated=True),
            cost=res.reserved_nano,
            counterfactual=res.reserved_nano,
            latency_ms=(time.perf_counter() - ctx.started) * 1000,
        )
        self.budget.submit(res, res.reserved_nano, res.reserved_tokens, record)

    def _ask_intent(self, ctx: RequestContext, planned: str, provider: str = "") -> dict[str, Any]:
        """The ledger record's first half: the reservation's write-ahead intent, completed at settle."""
        assert ctx.principal is not None
        return ledger.intent(
            request_id=ctx.request_id,
            client_request_id=ctx.client_request_id,
            ts_ms=ctx.started_ms,
            team=ctx.principal.team.name,
            key_id=ctx.principal.key_id,
            tags=ctx.tags,
            operation=ctx.operation,
            inbound=ctx.inbound,
            stream=ctx.stream,
            requested_model=ctx.requested_model,
            route=ctx.route,
            planned_model=planned,
            provider=provider,
        )

    async def _finish_body(
        self, ctx: RequestContext, sent: Dispatched, upstream_started: float, cache: CacheDecision | None
    ) -> Reply:
        try:
            raw = await sent.reply.read()
            data, parsed, usage = convert_body(ctx.inbound, sent.call.wire, raw, sent.model.name)
        except BaseException as exc:
            self._release(ctx, upstream_started, _failure_status(exc))
            raise
        ctx.upstream_s = time.perf_counter() - upstream_started
        if usage is None:
            usage = self._estimate_usage(ctx, sent, "".join(body_texts(parsed)))
        ctx.cost_nano = cost_nano(usage, sent.deployment.rates)  # the response's cost header needs it
        headers = self._headers(ctx, sent.deployment)
        return Reply(200, data, headers, after=partial(self._book_body, ctx, sent, usage, cache, data))

    def _book_body(
        self, ctx: RequestContext, sent: Dispatched, usage: Usage, cache: CacheDecision | None, data: bytes
    ) -> None:
        """A non-streamed answer's bookkeeping, once the client has it."""
        try:
            self._settle(ctx, sent, usage, 200, ctx.cost_nano or 0)
            if cache is not None and cache.write:
                entry = CacheEntry(
                    kind="body",
                    wire=_wire(ctx.inbound),
                    operation=ctx.operation,
                    body=data,
                    events=[],
                    usage=usage.as_dict(),
                    served_model=sent.model.name,
                    created_ms=int(time.time() * 1000),
                    cost_nano=ctx.cost_nano or 0,
                )
                self._cache_write(ctx, cache, sent.model.name, entry)
        finally:
            self._end_lead(ctx)  # a no-op after a cache write; wakes waiting peers otherwise
            self._observe(ctx, 200)

    def _relay(
        self, ctx: RequestContext, sent: Dispatched, upstream_started: float, cache: CacheDecision | None
    ) -> StreamReply:
        relay = stream_relay(ctx.inbound, sent.call.wire, ctx.client_wants_usage, sent.model.name)
        headers = self._headers(ctx, sent.deployment)
        return StreamReply(headers=headers, chunks=self._stream(ctx, sent, relay, upstream_started, cache))

    async def _stream(
        self,
        ctx: RequestContext,
        sent: Dispatched,
        relay: StreamRelay,
        upstream_started: float,
        cache: CacheDecision | None,
    ) -> AsyncIterator[bytes]:
        recorded: list[bytes] | None = [] if cache is not None and cache.write else None
        status, failure = 200, ""
        assert ctx.reservation is not None
        keeper = self.budget.keep_lease(ctx.reservation, self.tasks)
        try:
            out = relay.feed(sent.first_chunk)
            ctx.ttft_s = time.perf_counter() - ctx.started
            if out:
                _remember(recorded, out)
                yield out
            async for chunk in sent.reply.stream():
                out = relay.feed(chunk)
                if out:
                    _remember(recorded, out)
                    yield out
            relay.end()
        except UpstreamStreamError as exc:
            status, failure = 502, exc.message
            yield error_event(ctx.inbound, exc.message, exc.type)
        except (GeneratorExit, asyncio.CancelledError):
            status, failure = 499, "client disconnected"  # the edge stopped iterating
            raise
        except Exception as exc:
            status, failure = 502, getattr(exc, "message", str(exc)) or exc.__class__.__name__
            yield error_event(ctx.inbound, f"upstream stream failed: {failure}")
        finally:
            if keeper is not None:
                keeper.stop()
            sent.reply.close()
            ctx.upstream_s = time.perf_counter() - upstream_started
            ctx.error = failure
            usage = relay.usage if relay.completed and relay.usage is not None else None
            if usage is None:
                usage = self._estimate_usage(ctx, sent, relay.delivered_text(), reported=relay.usage)
            self._settle(ctx, sent, usage, status, cost_nano(usage, sent.deployment.rates))
            if recorded is not None and status == 200 and relay.completed and cache is not None:
                entry = CacheEntry(
                    kind="stream",
                    wire=_wire(ctx.inbound),
                    operation=ctx.operation,
                    body=b"",
                    events=_strip_terminal(recorded, ctx.inbound),
                    usage=usage.as_dict(),
                    served_model=sent.model.name,
                    created_ms=int(time.time() * 1000),
                    cost_nano=ctx.cost_nano or 0,
                )
                self._cache_write(ctx, cache, sent.model.name, entry)
            self._end_lead(ctx)
            self._observe(ctx, status)
        if status == 200:
            yield _cost_comment(ctx.cost_nano or 0)

    # ------------------------------------------------------------------ metering and settle

    def _estimate_usage(
        self, ctx: RequestContext, sent: Dispatched, delivered: str, reported: Usage | None = None
    ) -> Usage:
        """No usage from the provider (or a cut stream): count what was delivered, mark it estimated."""
        model = sent.deployment.upstream_model
        prompt = (
            reported.input_tokens
            if reported and reported.input_tokens
            else self._exact_prompt_tokens(ctx, model)
        )
        output = self.counter.count_text(delivered, model) if delivered else 0
        if reported is None:
            return Usage(input_tokens=prompt, output_tokens=output, estimated=True)
        # Keep every split the provider already reported (Anthropic's message_start carries the cache
        # reads and writes): dropping one would price those tokens at the plain input rate.
        return Usage(
            input_tokens=prompt,
            cached_input_tokens=reported.cached_input_tokens,
            cache_creation_input_tokens=reported.cache_creation_input_tokens,
            output_tokens=max(output, reported.output_tokens),
            reasoning_tokens=reported.reasoning_tokens,
            estimated=True,
        )

    def _settle(self, ctx: RequestContext, sent: Dispatched, usage: Usage, status: int, cost: int) -> None:
        assert ctx.principal is not None and ctx.reservation is not None
        deployment = sent.deployment
        ctx.cost_nano = cost
        requested = self.config.models.get(ctx.requested_model)
        # What the requested model would have cost: only a route to another model changes the price;
        # a request served by its own model (any of its deployments) saved nothing by routing.
        rerouted = requested is not None and deployment.logical != requested.name
        counterfactual = cost_nano(usage, requested.deployments[0].rates) if rerouted and requested else cost
        record = self._record(ctx, deployment, usage, cost=cost, counterfactual=counterfactual, status=status)
        team = ctx.principal.team.name
        model = sent.model.name
        self.metrics.cost.labels(team, model).inc(cost / 1e9)
        for token_type, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("cache_creation_input", usage.cache_creation_input_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count:
                self.metrics.tokens.labels(team, model, token_type).inc(count)
        if counterfactual > cost:
            self.metrics.savings.labels(team, "routing").inc((counterfactual - cost) / 1e9)
        self.budget.submit(ctx.reservation, cost, usage.total_tokens, record)

    def _record(
        self,
        ctx: RequestContext,
        deployment: DeploymentSpec,
        usage: Usage,
        *,
        cost: int,
        counterfactual: int,
        status: int,
    ) -> dict[str, Any]:
        # The reservation's write-ahead intent is the record's first half (complete() copies it).
        return ledger.complete(
            ctx.intent or self._ask_intent(ctx, deployment.logical),
            served_model=deployment.logical,
            upstream_model=deployment.upstream_model,
            provider=deployment.provider.system,
            deployment=deployment.id,
            cache=ctx.cache,
            status=status,
            usage=usage,
            cost=cost,
            counterfactual=counterfactual,
            latency_ms=(time.perf_counter() - ctx.started) * 1000,
        )

    def _cache_write(self, ctx: RequestContext, cache: CacheDecision, model: str, entry: CacheEntry) -> None:
        """Store under the model that actually answered (a fallback never fills the primary's slot).
        The write is queued and batched; the fill lock is released in the same batch, after it."""
        key = (
            ctx.cache_key
            if ctx.cache_key and model == ctx.cache_model
            else cache_key(cache.namespace, ctx.inbound, ctx.operation, model, ctx.body, ctx.cache_vary)
        )
        self.cache.finish(key, entry)
        lead, ctx.cache_lead = ctx.cache_lead, None
        if lead is not None and lead[1] != key:
            self.cache.finish(lead[1], None)
            self.tasks.spawn(self.cache.release(*lead), name="cache-unlock")
        self.cache.queue_put(cache.namespace, key, entry, cache.ttl_s)

    # ------------------------------------------------------------------ response headers and metrics

    def _headers(self, ctx: RequestContext, deployment: DeploymentSpec) -> dict[str, str]:
        headers = {
            "x-gateway-model": deployment.logical,
            "x-gateway-route": ctx.route,
            "x-gateway-cache": ctx.cache,
        }
        if ctx.cache_age_s is not None:
            headers["age"] = str(ctx.cache_age_s)
        if ctx.cost_nano is not None:
            headers["x-gateway-cost-usd"] = nano_to_usd_str(ctx.cost_nano)
        res = ctx.reservation
        if res is not None and res.remaining_nano >= 0:
            headers["x-gateway-budget-remaining-usd"] = nano_to_usd_str(res.remaining_nano)
        if res is not None:
            for key, value in res.rate_remaining.items():
                kind, _, scope = key.partition(":")
                if scope.startswith("team:"):
                    noun = "requests" if kind == "rpm" else "tokens"
                    headers[f"x-ratelimit-remaining-{noun}"] = str(value)
        return headers

    def _observe(self, ctx: RequestContext, status: int) -> None:
        ctx.status = status
        if ctx.principal is None:
            return
        provider = ctx.served.provider.system if ctx.served else "-"
        model = ctx.served.logical if ctx.served else ctx.requested_model
        self.metrics.requests.labels(
            ctx.principal.team.name, ctx.route, model, provider, ctx.operation, status_class(status)
        ).inc()
        total = time.perf_counter() - ctx.started
        self.metrics.request_duration.labels(ctx.operation, provider).observe(total)
        if ctx.cache != "hit":
            self.metrics.upstream_duration.labels(provider, model).observe(ctx.upstream_s)
        self.metrics.overhead.labels(ctx.operation).observe(max(0.0, total - ctx.upstream_s))
        if ctx.ttft_s is not None:
            self.metrics.ttft.labels(ctx.operation, provider).observe(ctx.ttft_s)
        if ctx.cache == "miss":
            self.metrics.cache_requests.labels(ctx.principal.team.name, "miss").inc()


# ---------------------------------------------------------------------- helpers

_SEND_UNCOUNTED_BYTES_PER_TOKEN = 1.5  # see Pipeline._fits


def _failure_status(exc: BaseException) -> int:
    """The status the client sees for a request that failed before anything was served."""
    if isinstance(exc, GatewayError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return 499  # the client went away while the gateway waited upstream
    return 502


def _wire(inbound: str) -> Literal["openai", "anthropic"]:
    return "anthropic" if inbound == "anthropic" else "openai"


def _remember(recorded: list[bytes] | None, out: bytes) -> None:
    if recorded is None:
        return
    start = 0
    while True:  # one element per SSE event, as the client received it
        end = out.find(b"\n\n", start)
        if end < 0:
            break
        recorded.append(out[start : end + 2])
        start = end + 2


def _strip_terminal(events: list[bytes], inbound: str) -> list[bytes]:
    if inbound == "openai":
        return [e for e in events if e != b"data: [DONE]\n\n"]
    return events


def _cost_comment(cost: int) -> bytes:
    """An SSE comment after the terminal event: SDKs ignore comments, curl and proxies show it."""
    return b": x-gateway-cost-usd=" + nano_to_usd_str(cost).encode() + b"\n\n"


async def _iterate(events: list[bytes], tail: bytes) -> AsyncIterator[bytes]:
    for event in events:
        yield event
    yield tail
