"""The provider contract, and how the official SDKs reach the network.

Transport is the official `anthropic` and `openai` SDKs, which read the vendors' environment
variables themselves, built with max_retries=0 (retries are `resilience`'s). They speak httpx2;
`HttpxTransport` carries their requests over httpx, the project's HTTP stack and the one respx fakes
in tests. SDK exceptions become classified ProviderErrors with the keys scrubbed. The API key stays
inside the SDK client (never in a repr).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx
import httpx2
import orjson

from mitre.mappers.llm.errors import ProviderError, error_from_response, scrub
from mitre.models import Usage
from mitre.prompting import RenderedPrompt


@dataclass(frozen=True)
class ProviderReply:
    """A 2xx answer: the structured data if any, else a parse problem to report back to the model."""

    data: Any
    usage: Usage
    problem: str | None = None
    raw_id: str | None = None
    malformed: bool = False  # the body was not JSON at all: a broken endpoint, which the breaker counts


class Provider(Protocol):
    """The vendor-specific part: request bodies, the SDK call and reply parsing."""

    name: str
    model: str

    def build_request(self, prompt: RenderedPrompt, retry_note: str | None = None) -> dict[str, Any]: ...

    def send(self, body: dict[str, Any], timeout: float) -> ProviderReply: ...

    def parse_reply(self, payload: Any) -> ProviderReply: ...

    def secrets(self) -> tuple[str, ...]: ...

    # batch
    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def submit_batch(self, lines: Sequence[dict[str, Any]]) -> str: ...

    def batch_results(self, batch_id: str) -> list[dict[str, Any]] | None: ...

    def parse_batch_line(self, line: Mapping[str, Any]) -> tuple[str, ProviderReply | ProviderError]: ...


class HttpxTransport(httpx2.BaseTransport):
    """Carries the SDKs' requests (they speak httpx2) over an httpx client: the project's HTTP stack, the one
    respx fakes in tests. Bodies are passed on still encoded, so httpx2 decodes them as it would its own."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(transport=transport)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout")
        outgoing = httpx.Request(
            request.method,
            str(request.url),
            headers=request.headers.multi_items(),
            content=request.read(),
            extensions={"timeout": timeout} if timeout else {},
        )
        try:
            response = self._client.send(outgoing, stream=True)
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise httpx2.TimeoutException(str(exc), request=request) from exc
        except httpx.TransportError as exc:
            raise httpx2.TransportError(str(exc), request=request) from exc
        return httpx2.Response(response.status_code, headers=response.headers.multi_items(), content=raw)

    def close(self) -> None:
        self._client.close()


def sdk_http_client(transport: httpx.BaseTransport | None = None) -> httpx2.Client:
    """The `http_client` both SDKs are built with."""
    return httpx2.Client(transport=HttpxTransport(transport))


@dataclass(frozen=True)
class SdkErrors:
    """One vendor SDK's exception classes (the timeout class is a subclass of the connection class)."""

    status: type[Exception]  # APIStatusError, with the httpx2 response as `.response`
    timeout: type[Exception]  # APITimeoutError
    connection: type[Exception]  # APIConnectionError


class SdkClient(Protocol):
    """What SdkProvider needs of an SDK client (anthropic.Anthropic, openai.OpenAI)."""

    @property
    def base_url(self) -> httpx2.URL: ...


ClientT = TypeVar("ClientT", bound=SdkClient)


class SdkProvider(Generic[ClientT]):
    """What the vendors share over their official SDK clients (built with max_retries=0: retries are ours)."""

    name = "sdk"
    errors: SdkErrors

    def __init__(self, model: str, client: ClientT, clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self._client = client
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def secrets(self) -> tuple[str, ...]:
        """The credentials the client holds, to scrub from every message."""
        raise NotImplementedError

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Turns the SDK's exceptions into classified ProviderErrors with the keys scrubbed."""
        try:
            yield
        except self.errors.timeout as exc:
            raise ProviderError("timeout", scrub(f"{type(exc).__name__}: request timed out", self.secrets())) from None
        except self.errors.connection as exc:
            detail = exc.__cause__ or exc
            raise ProviderError("connection", scrub(f"{type(exc).__name__}: {detail}", self.secrets())) from None
        except self.errors.status as exc:
            response = exc.response  # type: ignore[attr-defined]
            raise error_from_response(response, self.secrets(), self._clock()) from None


@dataclass(frozen=True)
class Malformed:
    """A 2xx body that is not JSON (cut-off or garbled): reported to the model as an invalid answer."""

    text: str


def json_body(response: httpx2.Response) -> Any:
    """A 2xx body as JSON, or a `Malformed` marker when it is cut off or garbled."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return Malformed(response.text[:200])


def malformed_reply(payload: Any) -> ProviderReply | None:
    if isinstance(payload, Malformed):
        problem = "the response body was not valid JSON (truncated or malformed)"
        return ProviderReply(None, Usage(), problem=problem, malformed=True)
    return None


def strip_keywords(schema: Any, drop: frozenset[str]) -> Any:
    """A copy of a JSON schema without the given keywords (vendors accept different subsets)."""
    if isinstance(schema, dict):
        return {k: strip_keywords(v, drop) for k, v in schema.items() if k not in drop}
    if isinstance(schema, list):
        return [strip_keywords(v, drop) for v in schema]
    return schema


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(dict(line)) + b"\n" for line in lines)


def parse_jsonl(text: str | bytes) -> list[dict[str, Any]]:
    raw = text.encode() if isinstance(text, str) else text
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
