"""The one error hierarchy of llmrelay.

Every failure a client can see is an :class:`LLMRelayError`. Each subclass fixes the HTTP
status and the OpenAI ``type``; :func:`error_payload` is the one place that turns an error
into the wire envelope ``{"error": {"message", "type", "param", "code"}}``.

    LLMRelayError                      500 server_error
    ├── InvalidRequest                 400 invalid_request_error
    │   ├── InvalidJSON                400 code=invalid_json
    │   ├── ContextLengthExceeded      400 code=context_length_exceeded
    │   └── UnsupportedContent         400 code=unsupported_content (e.g. images to a text model)
    ├── AuthenticationError            401 authentication_error, code=invalid_api_key
    ├── PermissionDenied               403 permission_error
    ├── NotFound                       404 invalid_request_error
    │   └── ModelNotFound              404 code=model_not_found
    ├── MethodNotAllowed               405 invalid_request_error
    ├── Conflict                       409 invalid_request_error, code=conflict
    ├── PayloadTooLarge                413 invalid_request_error, code=request_too_large
    ├── UnsupportedMediaType           415 invalid_request_error
    ├── RateLimited                    429 rate_limit_exceeded (Retry-After)
    ├── InsufficientQuota              429 insufficient_quota (Retry-After)
    ├── ServerError                    500 server_error
    ├── UpstreamError                  502 upstream_error
    ├── ServiceUnavailable             503 service_unavailable (Retry-After)
    └── UpstreamTimeout                504 timeout
"""

from __future__ import annotations

from typing import Any, ClassVar


class LLMRelayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        # Set on upstream failures: another channel may succeed (before the first byte only).
        self.retryable = retryable
        self.retry_after = retry_after


class InvalidRequest(LLMRelayError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    default_code = "invalid_json"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class UnsupportedContent(InvalidRequest):
    default_code = "unsupported_content"


class AuthenticationError(LLMRelayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(LLMRelayError):
    status = 403
    type = "permission_error"
    default_code = "model_not_allowed"


class NotFound(LLMRelayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(LLMRelayError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(LLMRelayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(LLMRelayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(LLMRelayError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(LLMRelayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class InsufficientQuota(LLMRelayError):
    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class ServerError(LLMRelayError):
    status = 500
    type = "server_error"


class UpstreamError(LLMRelayError):
    status = 502
    type = "upstream_error"
    default_code = "bad_gateway"


class ServiceUnavailable(LLMRelayError):
    status = 503
    type = "service_unavailable"
    default_code = "service_unavailable"


class UpstreamTimeout(LLMRelayError):
    status = 504
    type = "timeout"
    default_code = "upstream_timeout"


def error_payload(error: LLMRelayError) -> dict[str, Any]:
    """The OpenAI error envelope for ``error``; ``code`` is always a string or None."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def internal_error() -> ServerError:
    """What a client sees for a bug of ours: no stack trace, no internals."""
    return ServerError(
        "The server had an error while processing your request. "
        "The error was logged; retry, and report it if it persists.",
        code="internal_error",
    )
