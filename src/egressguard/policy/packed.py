"""A big collection's rules, kept packed behind the `Sequence` a collection's `rules` is.

A validated pydantic rule costs about a kilobyte (a `__dict__`, a fields-set, a list per
list field); a million of them would not fit the memory a gateway has (issue 14 item 7).
Each rule is validated exactly as before (the model, its validators, its error paths),
then kept as a record `(name, first list field as a tuple, template)`: the template is a
rule model holding every other field, shared by all the rules that agree on them (a big
policy has a handful of shapes). Reading `rules[i]` or iterating builds the same frozen
model back (a new object each time: an equal one); `records()` gives readers that walk
every rule (the flattening in `policy.rules`) the records without building models.

Collections below `PACK_AT` rules keep a plain list of models, so a small policy is
exactly what it was.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel, GetCoreSchemaHandler, SerializationInfo, TypeAdapter
from pydantic_core import core_schema

M = TypeVar("M", bound=BaseModel)
PACK_AT = 1_000
"""Rules from which a collection is kept packed."""
_CHUNK = 2_000  # models built at a time when a packed list is serialised
_TEMPLATES_MAX = 4_096  # distinct shapes remembered across validations (then forgotten)
Record = tuple[str, tuple[Any, ...], Any]

_set = object.__setattr__


class _Layout:
    """How one rule model is packed: its field names, which one is kept per rule beside
    the name, and which fields are lists (stored as tuples)."""

    def __init__(self, model: type[BaseModel], own: str) -> None:
        self.model = model
        self.own = own
        self.lists = tuple(name for name, info in model.model_fields.items()
                           if getattr(info.annotation, "__origin__", None) is list)
        shared = tuple(f for f in model.model_fields if f not in ("name", own))
        self._shared = operator.itemgetter(*shared)
        self._shared_lists = frozenset(self.lists) & frozenset(shared)
        self._fields = shared
        self._templates: dict[tuple[Any, ...], BaseModel] = {}
        self._last: BaseModel | None = None
        self.adapter: TypeAdapter[list[Any]] | None = None  # for `dump_rules`

    def pack(self, rule: BaseModel) -> Record:
        """The record of a validated rule; its other fields go to a shared template."""
        values = rule.__dict__
        fields_set = rule.__pydantic_fields_set__
        template = self._last  # the common case: the same shape as the rule before
        if template is None or fields_set != template.__pydantic_fields_set__ or \
                self._shared(values) != self._shared(template.__dict__):
            template = self._template(rule)
        own = values[self.own]
        return values["name"], tuple(own) if own.__class__ is list else own, template

    def _template(self, rule: BaseModel) -> BaseModel:
        values = rule.__dict__
        lists = self._shared_lists
        key = tuple([tuple(values[f]) if f in lists else values[f] for f in self._fields])
        key += (frozenset(rule.__pydantic_fields_set__),)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _TEMPLATES_MAX:
                self._templates.clear()
            template = self.model.__new__(self.model)
            _set(template, "__dict__", {**values, "name": "", self.own: []})
            _set(template, "__pydantic_fields_set__", set(rule.__pydantic_fields_set__))
            _set(template, "__pydantic_extra__", None)
            _set(template, "__pydantic_private__", None)
            self._templates[key] = template
        self._last = template
        return template

    def build(self, record: Record) -> BaseModel:
        """The frozen model a record stands for (as `model_construct` would build it),
        with lists of its own."""
        name, own, template = record
        values = template.__dict__.copy()
        for field in self.lists:
            values[field] = list(values[field])
        values["name"] = name
        values[self.own] = list(own)
        rule = self.model.__new__(self.model)
        _set(rule, "__dict__", values)
        _set(rule, "__pydantic_fields_set__", set(template.__pydantic_fields_set__))
        _set(rule, "__pydantic_extra__", None)
        _set(rule, "__pydantic_private__", None)
        return rule


def _same(a: Record, b: Record) -> bool:
    return a[0] == b[0] and a[1] == b[1] and (a[2] is b[2] or a[2] == b[2])


class RuleList(Sequence[M], Generic[M]):
    """An immutable sequence of rules stored as records (see the module docstring)."""

    __slots__ = ("_layout", "records")

    def __init__(self, layout: _Layout, records: list[Record]) -> None:
        self._layout = layout
        self.records = records
        """The packed rules. Not to be changed (the holder empties it only to free a
        replaced policy nobody holds)."""

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> M: ...
    @overload
    def __getitem__(self, index: slice) -> list[M]: ...

    def __getitem__(self, index: int | slice) -> M | list[M]:
        if isinstance(index, slice):
            return [self._build(r) for r in self.records[index]]
        return self._build(self.records[index])

    def _build(self, record: Record) -> M:
        return self._layout.build(record)  # type: ignore[return-value]

    def __iter__(self) -> Iterator[M]:
        build = self._layout.build
        for record in self.records:
            yield build(record)  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RuleList):
            return len(self) == len(other) and all(map(_same, self.records, other.records))
        if isinstance(other, list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other,
                                                                          strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __repr__(self) -> str:
        return repr(list(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickle, (self._layout.model, list(self))


_LAYOUTS: dict[type[BaseModel], _Layout] = {}


def _unpickle(model: type[BaseModel], rules: list[BaseModel]) -> Sequence[BaseModel]:
    layout = _LAYOUTS[model]
    return RuleList(layout, [layout.pack(r) for r in rules])


class Packer(Generic[M]):
    """Packs rules of one model validated one at a time (a streamed big document)."""

    def __init__(self, model: type[M]) -> None:
        self._layout = _LAYOUTS[model]
        self.records: list[Record] = []

    def add(self, rule: M) -> None:
        self.records.append(self._layout.pack(rule))

    def rules(self) -> RuleList[M]:
        return RuleList(self._layout, self.records)


def dump_rules(rules: RuleList[M], **options: Any) -> list[Any]:
    """`TypeAdapter(list[Rule]).dump_python(rules, **options)`, a slice at a time (each
    one native call of a few milliseconds)."""
    layout = rules._layout
    if layout.adapter is None:
        layout.adapter = TypeAdapter(list[layout.model])  # type: ignore[name-defined]
    out: list[Any] = []
    for start in range(0, len(rules), _CHUNK):
        out.extend(layout.adapter.dump_python(rules[start:start + _CHUNK], **options))
    return out


def records(rules: Sequence[M]) -> Iterator[tuple[str, tuple[Any, ...], M]]:
    """(name, the own list field as a tuple, a model holding the other fields) per rule,
    for a packed list without building models, and for a plain list of models too."""
    if isinstance(rules, RuleList):
        yield from rules.records
        return
    for rule in rules:
        own = _LAYOUTS[type(rule)].own
        yield rule.name, tuple(getattr(rule, own)), rule  # type: ignore[attr-defined]


class Packed:
    """`Annotated[Sequence[Rule], Packed(Rule, "targets")]`: validated as `list[Rule]`
    (the same errors at the same paths), each rule packed as soon as it is valid, the
    list kept packed from `PACK_AT` rules; serialised as the list of models it stands
    for. An already validated `RuleList` of that model is taken as it is (as pydantic
    takes a model instance)."""

    def __init__(self, model: type[BaseModel], own: str) -> None:
        self.layout = _LAYOUTS.setdefault(model, _Layout(model, own))

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        layout = self.layout
        model_schema = handler.generate_schema(layout.model)
        models = core_schema.list_schema(model_schema)
        packed = core_schema.list_schema(
            core_schema.no_info_after_validator_function(layout.pack, model_schema))

        def validate(value: Any, inner: core_schema.ValidatorFunctionWrapHandler
                     ) -> Sequence[BaseModel]:
            if isinstance(value, RuleList) and value._layout is layout:
                return value
            found: list[Record] = inner(value)
            if len(found) >= PACK_AT:
                return RuleList(layout, found)
            return [layout.build(r) for r in found]

        def serialize(value: Any, inner: core_schema.SerializerFunctionWrapHandler,
                      info: SerializationInfo) -> Any:
            if not isinstance(value, RuleList) or info.include or info.exclude:
                return inner(list(value) if isinstance(value, RuleList) else value)
            out: list[Any] = []
            for start in range(0, len(value), _CHUNK):
                out.extend(inner(value[start:start + _CHUNK]))
            return out

        return core_schema.no_info_wrap_validator_function(
            validate, packed, serialization=core_schema.wrap_serializer_function_ser_schema(
                serialize, schema=models, info_arg=True))


def consuming(items: list[Any]) -> Iterable[Any]:
    """`items` handed out one by one and dropped from the list as they go, so that a big
    parsed document is freed while it is validated (the list ends empty)."""
    items.reverse()
    while items:
        yield items.pop()
