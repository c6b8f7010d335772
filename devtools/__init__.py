"""Development tooling: real servers for tests, CI and benchmarks. Not installed with the product.

- `devtools.es_node`: a local single-node Elasticsearch from Maven Central's distribution;
- `devtools.servers`: "the node or server at this URL, else one started here", shared by the pytest
  fixtures in `tests/` and the benchmarks in `bench/`;
- `devtools.receivers`: export receivers as processes a test can stop and restart — the Splunk HEC
  stand-in (`devtools.hec_standin`) and medallion, a TAXII 2.1 server (`devtools.taxii_server`).
"""
