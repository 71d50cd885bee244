"""Operations: settings (flags, `PROCESSOR_*` variables, YAML), logging with secret
redaction, Prometheus metrics, the health server and consumer lag. The runtime reports
through this layer; `core` never imports it."""
