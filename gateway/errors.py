"""The gateway's one exception hierarchy. The HTTP edge renders each into the caller's wire format.

    GatewayError                      status  openai type              anthropic type
    ├── InvalidRequest                400     invalid_request_error    invalid_request_error
    │   └── ContextWindowExceeded     400     invalid_request_error    invalid_request_error
    ├── BodyTooLarge                  413     invalid_request_error    request_too_large
    ├── AuthenticationFailed          401     authentication_error     authentication_error
    ├── PermissionDenied              403     permission_error         permission_error
    ├── NotFound                      404     invalid_request_error    not_found_error
    │   └── ModelNotFound             404     invalid_request_error    not_found_error
    ├── PolicyDenied                  403     permission_error         permission_error
    ├── BudgetExceeded                429     insufficient_quota       rate_limit_error
    ├── RateLimited                   429     rate_limit_error         rate_limit_error
    ├── StoreUnavailable              503     service_unavailable      api_error
    ├── Overloaded                    503     service_unavailable      overloaded_error (529)
    ├── UpstreamError                 502     upstream_error           api_error
    │   └── UpstreamStatusError       (the upstream's own 4xx/429/5xx status, passed through)
    └── UpstreamTimeout               504     timeout                  timeout_error

Nothing below the HTTP edge knows about aiohttp; everything raises one of these.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status = 500
    anthropic_status: int | None = None  # where Anthropic's API answers with another status
    openai_type = "api_error"
    anthropic_type = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class ContextWindowExceeded(InvalidRequest):
    code = "context_length_exceeded"


class BodyTooLarge(GatewayError):
    status = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"
    code = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"


class PolicyDenied(PermissionDenied):
    code = "policy_denied"


class NotFound(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class BudgetExceeded(GatewayError):
    status = 429
    openai_type = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    code = "budget_exceeded"


class RateLimited(GatewayError):
    status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class StoreUnavailable(GatewayError):
    status = 503
    openai_type = "service_unavailable"
    anthropic_type = "api_error"
    code = "store_unavailable"


class Overloaded(GatewayError):
    """The worker is at its in-flight cap. Anthropic's API answers overload with 529, OpenAI's with
    503: each caller gets the status its SDK knows to retry."""

    status = 503
    anthropic_status: int | None = 529
    openai_type = "service_unavailable"
    anthropic_type = "overloaded_error"
    code = "overloaded"


class UpstreamError(GatewayError):
    status = 502
    openai_type = "upstream_error"
    anthropic_type = "api_error"
    code = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; it is passed through (same status, provider body)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        body: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, headers=headers, code=code)
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s
        if status == 429:
            self.openai_type = "rate_limit_error"
            self.anthropic_type = "rate_limit_error"
        elif status == 529:
            self.anthropic_type = "overloaded_error"
        elif status < 500:
            self.openai_type = "invalid_request_error"
            self.anthropic_type = "invalid_request_error"

    @property
    def retryable(self) -> bool:
        return self.status in (408, 409, 429) or self.status >= 500


class UpstreamTimeout(GatewayError):
    status = 504
    openai_type = "timeout"
    anthropic_type = "timeout_error"
    code = "upstream_timeout"


class AllUpstreamsFailed(UpstreamError):
    """Every model in the chain failed; keeps each attempt's error, in order, for the log and the message."""

    def __init__(self, attempts: list[tuple[str, GatewayError]]) -> None:
        last = attempts[-1][1] if attempts else UpstreamError("no upstream attempted")
        summary = "; ".join(f"{name}: {err.status} {err.message}" for name, err in attempts)
        message = (
            f"all upstream attempts failed ({summary})"
            if attempts
            else "no upstream deployment was available"
        )
        super().__init__(message, headers=dict(last.headers))
        self.attempts = attempts
        self.status = last.status if last.status >= 400 else 502
        self.openai_type = last.openai_type
        self.anthropic_type = last.anthropic_type
        self.code = last.code  # type: ignore[assignment]
        self.last = last
