"""LLM spend: prices, the ledger, the budget (soft-limit throttle, hard-limit kill switch) and its report.

- `prices`  USD per million tokens from `mitre/data/prices.yaml`;
- `ledger`  the append-only event log, in SQLite or an Elasticsearch index;
- `budget`  a workflow's state over the ledger: ok, soft (throttle) or killed (local only);
- `report`  `attackmap budget status`: spend, burn rate, projection, savings, a chart.
"""
