"""Signed federation: enriched findings (and analyst feedback) exchanged with peer systems.

A finding is the exports' common event (`mitre.io.exports.event.CommonEvent`); `envelope` is what one
request carries, `signing` signs and verifies it (Ed25519 with a key id, or HMAC-SHA256 for
shared-secret peers), `outbound` is the peer's sink of the exports' delivery layer (spool, retry,
dead letter) over HTTPS with mutual TLS, `inbound` is the receiving endpoint (signature, key id,
freshness, replay, size, rate and tenant checks before anything is emitted) and `store` is the nonce
and delivery memory every receiver process shares.
"""
