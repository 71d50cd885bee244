"""Handlers: the user code a stage runs on every artifact.

A handler is a callable `handler(artifact) -> result` where the result is

* the same `Artifact` object: unchanged (the stage passes the original bytes through);
* another `Artifact`: the replacement;
* `None`: drop the artifact;
* a list or tuple of artifacts (or `Routed`): fan-out, each continues down the chain;
* `Routed(output, artifact)`: send this artifact to the named output instead of the
  default one (the stage maps output names to topics).

A handler may be `async def`: the stage then runs many calls at once on an event loop
(`max_concurrency`), and puts the outputs back in input order. A *batch handler* is one
whose first parameter is annotated as a list (or sequence) of artifacts; it gets a list
and returns one outcome per artifact, in order, where an outcome may also be an exception
instance (the record is then treated as if a one-record handler had raised it):

    def enrich_all(artifacts: list[Artifact]) -> list[Artifact | None]: ...

A handler signals trouble by raising `InvalidArtifact` (dead-letter it),
`RetryableError` (retry with backoff) or anything else (the stage's error policy decides).

`chain(h1, h2, ...)` composes handlers. A stage names its handlers in configuration, each
as `module:function` or by a short name, which `registry` resolves:

* names registered in this process with `@handler("name")` or `registry.register`;
* names that installed distributions declare as entry points of the group
  `processor.handlers` (`HANDLER_ENTRY_POINTS`), loaded only when first asked for. This
  package declares the demo's `validate`, `transform` and `enrich` that way, in
  `pyproject.toml`; a plugin distribution declares its own the same way:

      [project.entry-points."processor.handlers"]
      shout = "my_handlers:shout"

An unknown name is a `HandlerNotFound` that lists every name known.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Final, NamedTuple, TypeAlias, TypeVar

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError, HandlerNotFound

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = ""
"""The name of a stage's default output (its output topic)."""


class Routed(NamedTuple):
    """An artifact sent to a named output rather than the default one."""

    output: str
    artifact: Artifact


Outcome: TypeAlias = Artifact | Routed | Sequence[Artifact | Routed] | None
Handler: TypeAlias = Callable[[Artifact], Outcome]
AsyncHandler: TypeAlias = Callable[[Artifact], Awaitable[Outcome]]


BatchOutcome: TypeAlias = Outcome | BaseException
"""One outcome of a batch handler: as for one record, or the exception it raised."""
BatchHandler: TypeAlias = (Callable[[list[Artifact]], Sequence[BatchOutcome]]
                           | Callable[[list[Artifact]], Awaitable[Sequence[BatchOutcome]]])
AnyHandler: TypeAlias = Handler | AsyncHandler | BatchHandler
"""What a stage runs: a handler, an async handler or a batch handler (sync or async)."""

_SEQUENCE_OF_ARTIFACTS = re.compile(
    r"^\s*(list|List|Sequence|typing\.Sequence|collections\.abc\.Sequence|abc\.Sequence)"
    r"\[\s*([\w.]*\.)?Artifact\s*\]\s*$")


def is_async_handler(h: object) -> bool:
    """Whether `h` is an `async def` function (or an object with an async `__call__`)."""
    return inspect.iscoroutinefunction(h) or inspect.iscoroutinefunction(
        getattr(h, "__call__", None))  # noqa: B004 - the method, not callability


def is_batch_handler(h: object) -> bool:
    """Whether `h` declares its first parameter as a list (or sequence) of artifacts."""
    try:
        params = list(inspect.signature(h).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if not params or params[0].annotation is inspect.Parameter.empty:
        return False
    annotation = params[0].annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`
        return bool(_SEQUENCE_OF_ARTIFACTS.match(annotation))
    origin = getattr(annotation, "__origin__", None)
    args = getattr(annotation, "__args__", ())
    return origin in (list, Sequence) and tuple(args) == (Artifact,)


def outcomes(result: Outcome) -> list[Routed]:
    """Normalise a handler result into `(output, artifact)` pairs (empty when dropped)."""
    if result is None:
        return []
    if isinstance(result, Artifact):
        return [Routed(DEFAULT_OUTPUT, result)]
    if isinstance(result, Routed):
        return [result]
    pairs: list[Routed] = []
    for item in result:
        if isinstance(item, Artifact):
            pairs.append(Routed(DEFAULT_OUTPUT, item))
        elif isinstance(item, Routed):
            pairs.append(item)
        else:
            raise TypeError(
                f"a handler returned {type(item).__name__} in a fan-out; "
                "expected Artifact or Routed"
            )
    return pairs


def _check_single(result: Outcome) -> None:
    raise TypeError(
        f"a handler returned {type(result).__name__}; expected Artifact, None, Routed "
        "or a list of them"
    )


class Chain:
    """Handlers applied in order; a fan-out sends each part through the rest.

    A routed artifact leaves the chain at once, to its output. The result of a chain is
    always a list of `Routed` (possibly empty), and the same `Artifact` object when nothing
    changed (so the stage can pass the original bytes through).
    """

    __slots__ = ("_handlers", "names")

    def __init__(self, handlers: Sequence[Handler]) -> None:
        if not handlers:
            raise ValueError("a chain needs at least one handler")
        odd = [handler_name(h) for h in handlers if is_async_handler(h) or is_batch_handler(h)]
        if odd:
            raise ConfigError(f"{', '.join(odd)}: an async or batch handler runs alone, "
                              "not in a chain of handlers")
        self._handlers = tuple(handlers)
        self.names = tuple(handler_name(h) for h in handlers)

    def __call__(self, artifact: Artifact) -> Outcome:
        current: list[Routed] = [Routed(DEFAULT_OUTPUT, artifact)]
        for handler in self._handlers:
            nxt: list[Routed] = []
            for output, item in current:
                if output != DEFAULT_OUTPUT:
                    nxt.append(Routed(output, item))
                    continue
                result = handler(item)
                if result is item or type(result) is Artifact:
                    nxt.append(Routed(DEFAULT_OUTPUT, result))
                elif result is None:
                    continue
                elif isinstance(result, Routed | list | tuple):
                    nxt.extend(outcomes(result))
                else:
                    _check_single(result)
            current = nxt
            if not current:
                return None
        if len(current) == 1 and current[0].output == DEFAULT_OUTPUT:
            return current[0].artifact
        return current

    def __repr__(self) -> str:
        return f"Chain({', '.join(self.names)})"


def chain(*handlers: Handler) -> Handler:
    """One handler that runs `handlers` in order (a single handler is returned as is)."""
    if len(handlers) == 1:
        return handlers[0]
    return Chain(handlers)


def handler_name(h: Handler) -> str:
    module = getattr(h, "__module__", None) or "?"
    name = getattr(h, "__qualname__", None) or type(h).__name__
    return f"{module}:{name}"


HANDLER_ENTRY_POINTS: Final = "processor.handlers"
"""The entry-point group through which installed distributions name their handlers."""


class Registry:
    """Named handlers, so configuration can refer to them by name.

    Names come from `register` (in this process) and, when `entry_point_group` is given,
    from the entry points of that group in the installed distributions' metadata. An entry
    point is loaded (its module imported) the first time its name is resolved, never
    before; a name registered in the process wins over an entry point of the same name.
    """

    def __init__(self, entry_point_group: str | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self.entry_point_group = entry_point_group

    def register(self, name: str, h: Handler) -> None:
        if name in self._handlers and self._handlers[name] is not h:
            raise ValueError(f"a handler named {name!r} is registered already")
        self._handlers[name] = h

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self.entry_point_group is None:
            return {}
        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def names(self) -> list[str]:
        """Every name `resolve` knows: registered ones and declared entry points."""
        return sorted({*self._handlers, *self._entry_points()})

    def get(self, name: str) -> Handler | None:
        """A handler registered in this process under `name` (entry points not loaded)."""
        return self._handlers.get(name)

    def resolve(self, ref: str) -> Handler:
        """A handler by name (registered, or an entry point, loaded now), or by
        `module:function` (importing the module)."""
        found = self._handlers.get(ref)
        if found is not None:
            return found
        if ":" not in ref:
            return self._load_entry_point(ref)
        module_name, _, attr_path = ref.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError as exc:
            raise HandlerNotFound(f"handler {ref!r}: cannot import {module_name!r}: {exc}") from exc
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise HandlerNotFound(
                    f"handler {ref!r}: module {module_name!r} has no {attr_path!r}"
                ) from exc
        return _callable(ref, obj)

    def _load_entry_point(self, name: str) -> Handler:
        declared = self._entry_points()
        ep = declared.get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none"
            raise HandlerNotFound(
                f"no handler named {name!r}: use a known name ({known}) or module:function"
            )
        try:
            obj: object = ep.load()
        except (ImportError, AttributeError) as exc:
            raise HandlerNotFound(
                f"handler {name!r}: its entry point {ep.value!r} (group {ep.group!r}) does not "
                f"load: {exc}"
            ) from exc
        h = _callable(name, obj)
        logger.debug("handler %r loaded from entry point %s", name, ep.value)
        # A module that registers its handlers on import may have registered this one.
        if self._handlers.get(name) is not h:
            self.register(name, h)
        return h

    def resolve_all(self, refs: Iterable[str]) -> Handler:
        resolved = [self.resolve(r) for r in refs]
        if not resolved:
            raise HandlerNotFound("a stage needs at least one handler")
        return chain(*resolved)


def _callable(ref: str, obj: object) -> Handler:
    if not callable(obj):
        raise HandlerNotFound(f"handler {ref!r} is a {type(obj).__name__}, not a callable")
    return obj


registry = Registry(HANDLER_ENTRY_POINTS)
"""The process-wide registry used by `@handler`, the runner and the CLI."""


H = TypeVar("H", bound=Handler)


def handler(name: str | None = None) -> Callable[[H], H]:
    """Register a function under `name` (default: its `module:qualname`).

    >>> @handler("upper")
    ... def upper(a: Artifact) -> Artifact:
    ...     return a.with_payload(a.payload.upper())
    """

    def register(h: H) -> H:
        registry.register(name or handler_name(h), h)
        return h

    return register
