"""Signed federation: enriched findings (and analyst feedback) exchanged with peer systems.

`finding` is the payload (the common event, trimmed, with compliance controls and the execution
fingerprint), `signing` signs and verifies it (Ed25519 with a key id, or HMAC-SHA256 for shared-secret
peers), `outbound` spools and sends it over HTTPS with mutual TLS, `inbound` is the receiving endpoint
(signature, key id, freshness, replay, size, rate and tenant checks before anything is emitted) and
`store` is the nonce and delivery memory every receiver process shares.
"""
