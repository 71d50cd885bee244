"""The `processor` command: one module per command group. Nothing imports this layer."""
