"""The `processor` command: `main` (parser, dispatch, error handling) and one module per
command group (`demo`, `run`, `produce`, `topics`, `broker`, `lag`). The top layer:
nothing imports it."""
