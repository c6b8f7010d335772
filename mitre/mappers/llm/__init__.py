"""LLM mappers: a vendor behind the same cache, validator and budget as the local mapper.

One module a job:
- `errors`      classified vendor errors, API-key lookup and scrubbing;
- `transport`   the provider contract and the bridge that carries the official SDKs over httpx;
- `resilience`  timeouts, retries with backoff and Retry-After, the circuit breaker;
- `interpret`   a vendor's reply → a MappingResult, checked against the schema and the catalog;
- `mapper`      LLMMapper: prompt → call → interpretation, the local mapper as shortlist and fallback;
- `batch`       the vendors' batch APIs for backfills;
- `anthropic`, `openai`  the vendors (OpenAI also serves OpenAI-compatible servers).
"""
