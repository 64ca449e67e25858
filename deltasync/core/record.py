"""Frozen value classes that cost nothing to define.

A dataclass compiles its methods from generated source each time its module is
imported: about 1 ms a class on this machine (CPython 3.11 and 3.13 alike), and
the protocol's messages and effects alone made 40 ms of every command's start-up
-- a third of all our imports, and most of what `push` with nothing to do costs
above rsync. A `record` is a frozen dataclass (or, derived from `Mutable`, a plain one:
`fields`, `replace`, `asdict`, `__match_args__` and pattern matching work as
for any) whose methods are these shared ones, compiled once with the package. Making one is slower (its fields
are set in a loop), so what is made once per file stays a plain dataclass.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound=type)
_REQUIRED = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Any) -> None:
        self.make = make


class Record:
    """The base of every `record`: its fields in order, with their defaults; the ones compared; the ones shown."""

    __slots__ = ()
    __record__: ClassVar[tuple[tuple[str, ...], tuple[Any, ...], tuple[str, ...], tuple[str, ...]]] = \
        ((), (), (), ())

    def __init__(self, *args: Any, **kw: Any) -> None:
        names, defaults, _, _ = self.__record__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} positional arguments, {len(args)} given")
        put = object.__setattr__
        for name, value in zip(names, args):
            if name in kw:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {name!r}")
            put(self, name, value)
        for name, default in zip(names[len(args):], defaults[len(args):]):
            if name in kw:
                value = kw.pop(name)
            elif default is _REQUIRED:
                raise TypeError(f"{type(self).__name__}() missing required argument: {name!r}")
            elif type(default) is _Factory:
                value = default.make()
            else:
                value = default
            put(self, name, value)
        if kw:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kw))!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__record__[2])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__record__[3])
        return f"{type(self).__qualname__}({shown})"


class Mutable(Record):
    """A record whose fields may be set, as a plain `@dataclass`'s may (and, like one, unhashable)."""

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __hash__ = None  # type: ignore[assignment]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return _REQUIRED if f.default_factory is dataclasses.MISSING else _Factory(f.default_factory)


def _classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):  # `from __future__ import annotations`, as every module here has
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or getattr(annotation, "__origin__", None) is ClassVar


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """What `dataclass` finds on `cls`, found as it does (bases' fields first, then the class's own
    annotations in order, ClassVars left out) but without its per-class machinery: ~0.1 ms a class,
    most of what defining the protocol's types cost at every start."""
    found: dict[str, dataclasses.Field[Any]] = {}
    for base in reversed(cls.__mro__[1:]):
        found.update(getattr(base, "__dataclass_fields__", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _classvar(annotation):
            continue
        value = cls.__dict__.get(name, dataclasses.MISSING)
        if isinstance(value, dataclasses.Field):
            f = value
            if f.default is dataclasses.MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            if isinstance(value, (list, dict, set)):
                raise ValueError(f"{cls.__name__}.{name}: a mutable default; use field(default_factory=...)")
            f = dataclasses.field(default=value)
        f.name, f.type = name, annotation
        f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what fields() and replace() read
        if f.kw_only is dataclasses.MISSING:
            f.kw_only = False
        found[name] = f
    return found


def record(cls: T) -> T:
    """`@dataclass(frozen=True)` for a subclass of `Record` (`@dataclass` for one of `Mutable`),
    without compiling anything."""
    if not issubclass(cls, Record):
        raise TypeError(f"{cls.__name__}: a record derives from Record")
    found = _fields(cls)
    fields = tuple(found.values())
    defaults = tuple(_default(f) for f in fields)
    if any(a is not _REQUIRED and b is _REQUIRED for a, b in zip(defaults, defaults[1:])):
        raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")
    cls.__dataclass_fields__ = found  # type: ignore[attr-defined]
    cls.__match_args__ = tuple(f.name for f in fields)  # type: ignore[attr-defined]
    cls.__record__ = (tuple(f.name for f in fields), defaults, tuple(f.name for f in fields if f.compare),
                      tuple(f.name for f in fields if f.repr))
    return cls
