"""Keyed state for handlers: `KeyState` and the `@stateful` decorator.

A stateful handler takes a second argument, the state of its record's key::

    @stateful
    def count(artifact: Artifact, state: KeyState) -> Artifact:
        n = state.get("count", 0) + 1
        state.set("count", n)
        return artifact.with_metadata("count", n)

The state is scoped by the record's key and its input partition (a key always lands on
the same store), and its names are the handler's own. Values are JSON values (None,
bool, int, float, str, lists and dicts of them) or `bytes`. A record's writes count only
once its whole handler chain returned; a record whose handler raised (retried,
dead-lettered) leaves the state as it found it.

The stage (`processor.runtime.stateful`) keeps the stores, writes every change to a
changelog topic and recovers the stores from it (docs/state.md). Stateful handlers run
on the synchronous record path: an `async def`, batch or threaded stateful handler is
refused.
"""

from __future__ import annotations

import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeAlias

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError
from processor.core.handlers import Chain, Outcome, is_async_handler, is_batch_handler

__all__ = ["KeyState", "StateValue", "StatefulHandler", "bind_state", "stateful", "uses_state"]

StateValue: TypeAlias = Any
"""A JSON value (None, bool, int, float, str, list, dict) or `bytes`."""


class KeyState(ABC):
    """The state of the record being handled: named values of its key."""

    @abstractmethod
    def get(self, name: str, default: StateValue = None) -> StateValue:
        """The value stored under `name` for this record's key, or `default`."""

    @abstractmethod
    def set(self, name: str, value: StateValue) -> None:
        """Store `value` under `name` for this record's key (JSON or bytes)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove `name` for this record's key (nothing happens if it is not set)."""

    @property
    @abstractmethod
    def key(self) -> bytes | None:
        """The record's key."""


_bound = threading.local()


def bind_state(state: KeyState | None) -> None:
    """Make `state` the one stateful handlers of this thread see (the stage calls it
    before it handles a batch of a stateful stage)."""
    _bound.state = state


class StatefulHandler:
    """A handler that takes the record's `KeyState` as its second argument; called with
    the artifact alone, like any handler (so it chains)."""

    __slots__ = ("__name__", "__qualname__", "function")

    def __init__(self, function: Callable[[Artifact, KeyState], Outcome]) -> None:
        self.function = function
        self.__name__ = getattr(function, "__name__", "stateful")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)

    def __call__(self, artifact: Artifact) -> Outcome:
        state: KeyState | None = getattr(_bound, "state", None)
        if state is None:
            raise ConfigError(f"{self.__name__} is a stateful handler: it runs in a stage "
                              "(which keeps its state), not on its own")
        return self.function(artifact, state)

    def __repr__(self) -> str:
        return f"stateful({self.__qualname__})"


def stateful(function: Callable[[Artifact, KeyState], Outcome]) -> StatefulHandler:
    """Mark a handler as stateful: it is called with the artifact and the `KeyState` of
    its record's key. Only synchronous per-record handlers may be stateful."""
    if is_async_handler(function) or is_batch_handler(function):
        raise ConfigError(
            f"{_name(function)}: a stateful handler must be a synchronous handler of "
            "one artifact (async and batch handlers cannot keep state yet: docs/state.md)")
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        params = []
    if params and len(params) < 2 and params[0].kind is not params[0].VAR_POSITIONAL:
        raise ConfigError(f"{_name(function)}: a stateful handler takes two "
                          "arguments, the artifact and its KeyState")
    return StatefulHandler(function)


def _name(function: object) -> str:
    return str(getattr(function, "__qualname__", None) or repr(function))


def uses_state(handler: object) -> bool:
    """Whether `handler` (a chain, or a handler wrapped by a policy) runs a stateful
    handler anywhere in it."""
    if isinstance(handler, StatefulHandler):
        return True
    if isinstance(handler, Chain):
        return any(uses_state(h) for h in handler._handlers)
    inner = getattr(handler, "handler", None)
    return inner is not None and inner is not handler and uses_state(inner)
