"""The analyst feedback loop: verdicts on mappings, what they change, and the telemetry to tune by.

`models` are the records; `store` keeps corrections and per-rule opt-outs durably (SQLite embedded,
an Elasticsearch index when configured) and the review queue and decision telemetry (SQLite, local);
`loop` is what the engine consults: corrections override the mapping of the same cache key at once,
opt-outs join the tenant's decision, and corrections are exported to the knowledge base for its next
build.
"""
