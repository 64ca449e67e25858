"""`record`: a frozen dataclass made without compiling anything, behaving as `@dataclass(frozen=True)` does."""
import dataclasses
from dataclasses import FrozenInstanceError, field
from typing import ClassVar

import pytest

from deltasync.core.record import Mutable, Record, record


@record
class Point(Record):
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    cache: str | None = field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Twin:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    cache: str | None = field(default=None, compare=False, repr=False)


@record
class Checked(Record):
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")


@record
class Child(Point):
    z: int = 9


def test_a_record_is_made_as_a_frozen_dataclass_is():
    for cls in (Point, Twin):
        p = cls(1, tags=["a"])
        assert (p.x, p.y, p.tags, p.cache) == (1, 0, ["a"], None)
        assert cls(1).tags is not cls(1).tags  # a new list each time
        assert cls(x=2, y=3) == cls(2, 3)
        for bad in (lambda: cls(), lambda: cls(1, 2, [], None, 5), lambda: cls(1, x=1), lambda: cls(1, w=2)):
            with pytest.raises(TypeError):
                bad()
        with pytest.raises(FrozenInstanceError):
            p.x = 5
        with pytest.raises(FrozenInstanceError):
            del p.x
    assert repr(Point(1, 2, ["a"], "c")) == repr(Twin(1, 2, ["a"], "c")).replace("Twin", "Point")


def test_equality_hash_and_the_dataclass_helpers():
    assert Point(1, 2, cache="a") == Point(1, 2, cache="b")  # compare=False
    assert Point(1, 2) != Point(1, 3) and Point(1) != Twin(1) and Point(1) != (1, 0, [], None)
    assert hash(Checked(3)) == hash(Checked(3)) and len({Checked(3), Checked(3), Checked(4)}) == 2
    assert Child(1) != Point(1)  # another class, the same fields: not equal
    p = dataclasses.replace(Point(1, 2, ["t"]), y=5)
    assert (p.x, p.y, p.tags) == (1, 5, ["t"]) and type(p) is Point
    assert [f.name for f in dataclasses.fields(Child)] == ["x", "y", "tags", "cache", "z"]
    assert dataclasses.asdict(Checked(2)) == {"n": 2} and dataclasses.is_dataclass(Checked)
    assert Child(1, 2, z=3).z == 3 and Child(1).z == 9
    match Point(4, 5):
        case Point(x, y):
            assert (x, y) == (4, 5)


def test_post_init_runs_and_bad_definitions_are_refused():
    with pytest.raises(ValueError):
        Checked(-1)
    with pytest.raises(TypeError, match="follows one with a default"):
        @record
        class Bad(Record):
            a: int = 0
            b: int
    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Shared(Record):
            a: list[int] = []  # noqa: RUF012  # one list for every instance: refused, as dataclass does
    with pytest.raises(TypeError, match="derives from Record"):
        @record
        class Plain:
            a: int


def test_class_variables_are_not_fields_and_a_subclass_may_redefine_one():
    import typing

    @record
    class Kind(Record):
        NAME: ClassVar[str] = "kind"
        OTHER: typing.ClassVar[int] = 3
        TAG: "ClassVar[str]" = "t"  # a string, as under `from __future__ import annotations` (the package's way)
        a: int = 1

    @record
    class Sub(Kind):
        a: int = 5
        b: str = "x"

    assert [f.name for f in dataclasses.fields(Kind)] == ["a"] and Kind.NAME == "kind" and Kind.TAG == "t" and Kind().a == 1
    assert [f.name for f in dataclasses.fields(Sub)] == ["a", "b"] and Sub() == Sub(5, "x")
    assert Sub.__match_args__ == ("a", "b") and dataclasses.replace(Sub(), b="y") == Sub(5, "y")


def test_a_mutable_record_is_a_plain_dataclass():
    @record
    class Box(Mutable):
        items: list[int] = field(default_factory=list)
        n: int = 0

    b = Box()
    b.n = 3
    b.items.append(1)
    assert b == Box([1], 3) and b != Box([1], 4) and repr(b).endswith("<locals>.Box(items=[1], n=3)")
    with pytest.raises(TypeError):
        hash(b)  # unhashable, as a dataclass with eq and without frozen is
