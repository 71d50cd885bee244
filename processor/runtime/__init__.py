"""The runtime: a stage's options, its poll-decode-handle-encode-produce-commit loop, the
commit strategies (at-least-once, exactly-once), the retry holder, dead letters, the
worker runner and `build_stage`, the one way to assemble a stage from settings. It
depends on the layers below it (`ops`, `serde`, `backends`, `core`), never on `cli`."""
