"""The core layer: the `Artifact` value type, handler outcomes, the handler registry and
the error hierarchy. Everything else in the package builds on it, and it imports nothing
of ours: a handler author needs only this layer."""
