"""Artifact cryptography: signatures, sealed payloads, approvals, pseudonyms, Merkle roots.

Built on the `cryptography` package. The parts:

* `canonical`: the versioned byte encoding that signatures and approvals cover, and the
  associated data that binds a sealed payload to its envelope;
* `keys`: Ed25519 (signing) and X25519 (sealing) key files with key ids;
* `truststore`: the public keys a stage trusts, from files, settings or a mounted
  Kubernetes secret, with retired keys refused;
* `signing`, `approvals`, `sealing`, `pseudonym`, `merkle`: the operations;
* `policy`: a stage's keys and policies (`require_signature`, `require_approvals`,
  signing, sealing, opening) as a wrapper around its handler chain;
* `handlers`: the built-in handlers `sign`, `verify`, `seal` and `open`.

docs/security.md describes the formats and the threat model.
"""
