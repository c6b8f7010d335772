"""Exports for SIEMs and sharing communities, all fed from the common event format (`event`).

Files: `event` (NDJSON of common events), `stix` (a STIX 2.1 bundle), `navigator` (ATT&CK Navigator
layers), `matrix` (an HTML matrix). Receivers, behind the `sink.Sink` protocol and the shared
`delivery` layer (spool, retry, dead letter): `hec` (Splunk), `taxii` (TAXII 2.1), `elastic`
(an Elasticsearch data stream). `registry` builds them from settings. Nothing here imports Prefect.
"""
