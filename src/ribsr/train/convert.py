"""Parsed YAML (mappings, lists, scalars) converted into typed dataclasses, every problem collected with its key path.

A dataclass field's type says what its value becomes: ``bool``, ``int``, ``float``, ``str``, ``Path``, ``X | None``,
``tuple[X, ...]`` or ``tuple[X, Y]``, ``dict[str, X]``, or another dataclass (a nested mapping). :func:`option`
declares a field with the checks its value (each item of a tuple or dict) must pass. Numbers may be written as
BasicSR's files write them (``5e-4`` read as a string, ``!!float 5e3`` for a count); paths expand ``~`` and
``$VAR`` and resolve against :attr:`Context.base_dir`.

A value that does not convert yields :data:`BAD` and a problem in :attr:`Context.problems` ("key.path: message"),
so one pass reports everything wrong with a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

__all__ = ["BAD", "BlockCheck", "Context", "build", "convert", "option"]

BAD: Any = object()
"""What a value that did not convert becomes (its problem is recorded in the :class:`Context`)."""

_ENV_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def option(default: Any = MISSING, *, choices: Sequence[str] | None = None, aliases: Mapping[str, str] | None = None,
           ge: float | None = None, gt: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field whose value (each item of a tuple or dict) must be one of ``choices`` (``aliases`` map
    other spellings onto them) or lie within the bounds ``ge`` (>=), ``gt`` (>) and ``lt`` (<)."""
    meta = {"choices": choices, "aliases": aliases, "ge": ge, "gt": gt, "lt": lt}
    meta = {k: v for k, v in meta.items() if v is not None}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


BlockCheck = Callable[[Any, str, "Context"], Any]
"""A check of a whole block: ``(instance, key path, context)``, recording its problems in the context and returning
the instance (possibly normalised, e.g. with :func:`dataclasses.replace`)."""


@dataclass
class Context:
    """One conversion: its settings and what it found.

    ``base_dir`` is the folder relative paths resolve against; ``checks`` the :data:`BlockCheck` of a dataclass,
    run once its fields converted; ``ignorable`` the keys a dataclass accepts and drops (each named in
    ``ignored`` rather than reported as unknown). ``problems`` collects every problem, ``key.path: message``.
    """

    base_dir: Path
    checks: Mapping[type, BlockCheck] = field(default_factory=dict)
    ignorable: Mapping[type, frozenset[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def problem(self, path: str, message: str) -> None:
        """Record a problem of the value at key path ``path`` (empty: of the whole input)."""
        self.problems.append(f"{path}: {message}" if path else message)


def _describe(meta: Mapping[str, Any], kind: str) -> str:
    ge, gt, lt = meta.get("ge"), meta.get("gt"), meta.get("lt")
    if gt == 0 and ge is None and lt is None:
        return f"a positive {kind}"
    if ge == 0 and gt is None and lt is None:
        return f"a non-negative {kind}"
    parts = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
             f"< {lt}" if lt is not None else ""]
    return f"a {kind} " + " and ".join(p for p in parts if p)


def _check_range(value: float, original: Any, meta: Mapping[str, Any], path: str, kind: str, ctx: Context) -> Any:
    ge, gt, lt = meta.get("ge"), meta.get("gt"), meta.get("lt")
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (lt is not None and value >= lt):
        ctx.problem(path, f"must be {_describe(meta, kind)}, got {original!r}")
        return BAD
    return value


def _to_int(value: Any, meta: Mapping[str, Any], path: str, ctx: Context) -> Any:
    result: Any = BAD
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        result = int(value)  # BasicSR files write counts as `!!float 5e3`
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                result = int(number)
    if result is BAD:
        ctx.problem(path, f"must be an integer, got {value!r}")
        return BAD
    return _check_range(result, value, meta, path, "integer", ctx)


def _to_float(value: Any, meta: Mapping[str, Any], path: str, ctx: Context) -> Any:
    result: Any = BAD
    if isinstance(value, bool):
        pass
    elif isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):  # PyYAML reads `5e-4` (no dot) as a string
        try:
            result = float(value.strip())
        except ValueError:
            pass
    if result is BAD or not math.isfinite(result):
        ctx.problem(path, f"must be a finite number, got {value!r}")
        return BAD
    return _check_range(result, value, meta, path, "number", ctx)


def _to_str(value: Any, meta: Mapping[str, Any], path: str, ctx: Context) -> Any:
    if not isinstance(value, str):
        ctx.problem(path, f"must be a string, got {value!r}")
        return BAD
    choices = meta.get("choices")
    if choices is None:
        return value
    value = meta.get("aliases", {}).get(value, value)
    if value not in choices:
        also = f" (or {', '.join(repr(a) for a in meta['aliases'])})" if meta.get("aliases") else ""
        ctx.problem(path, f"must be one of {list(choices)}{also}, got {value!r}")
        return BAD
    return value


def _to_path(value: Any, path: str, ctx: Context) -> Any:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        ctx.problem(path, f"must be a non-empty path, got {value!r}")
        return BAD
    text = str(value)
    unset = [a or b for a, b in _ENV_VAR.findall(text) if (a or b) not in os.environ]
    if unset:
        names = ", ".join(f"${name}" for name in dict.fromkeys(unset))
        ctx.problem(path, f"environment variable {names} is not set (in {text!r})")
        return BAD
    expanded = Path(os.path.expanduser(os.path.expandvars(text)))
    return Path(os.path.normpath(ctx.base_dir / expanded))  # an absolute `expanded` replaces base_dir


def convert(value: Any, tp: Any, meta: Mapping[str, Any], path: str, ctx: Context) -> Any:
    """``value`` as type ``tp``, checked against ``meta`` (an :func:`option`'s checks), or :data:`BAD` with its
    problems recorded under key path ``path``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(value, inner, meta, path, ctx)
    if tp is bool:
        if isinstance(value, bool):
            return value
        ctx.problem(path, f"must be true or false, got {value!r}")
        return BAD
    if tp is int:
        return _to_int(value, meta, path, ctx)
    if tp is float:
        return _to_float(value, meta, path, ctx)
    if tp is str:
        return _to_str(value, meta, path, ctx)
    if tp is Path:
        return _to_path(value, path, ctx)
    if origin is tuple:
        return _to_tuple(value, args, meta, path, ctx)
    if origin is dict:
        if not isinstance(value, Mapping):
            ctx.problem(path, f"must be a mapping, got {value!r}")
            return BAD
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                ctx.problem(f"{path}.{key}", "keys must be strings")
                continue
            out[key] = convert(item, args[1], meta, f"{path}.{key}", ctx)
        return BAD if any(v is BAD for v in out.values()) or len(out) != len(value) else out
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, ctx)
    raise TypeError(f"no converter for {tp!r} at {path}")  # a bug in the dataclass declaring it, not user input


def _to_tuple(value: Any, args: tuple[Any, ...], meta: Mapping[str, Any], path: str, ctx: Context) -> Any:
    variadic = len(args) == 2 and args[1] is Ellipsis
    kind = {int: "integers", float: "numbers"}.get(args[0], "values")
    if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)):
        what = f"a list of {kind}" if variadic else f"a list of {len(args)} {kind}"
        ctx.problem(path, f"must be {what}, got {value!r}")
        return BAD
    items = [convert(v, args[0] if variadic else args[i], meta, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    return BAD if any(v is BAD for v in items) else tuple(items)


def build(cls: type, value: Any, path: str, ctx: Context) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``value``, checked key by key, then as a whole (its
    :attr:`Context.checks` entry); :data:`BAD` if anything in it is wrong (all of it recorded)."""
    if not isinstance(value, Mapping):
        ctx.problem(path, f"must be a mapping, got {value!r}")
        return BAD
    before = len(ctx.problems)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    ignorable = ctx.ignorable.get(cls, frozenset())
    for key in value:
        if key in ignorable:
            ctx.ignored.append(f"{path}.{key}")
        elif key not in fields:
            ctx.problem(f"{path}.{key}", f"unknown key (known: {', '.join(fields)})")
    kwargs, bad = {}, []
    for name, f in fields.items():
        if name in value:
            kwargs[name] = convert(value[name], hints[name], f.metadata, f"{path}.{name}", ctx)
        elif f.default is MISSING:
            ctx.problem(f"{path}.{name}", "missing")
            kwargs[name] = BAD
        if kwargs.get(name) is BAD:
            bad.append(name)
            kwargs[name] = f.default  # MISSING for required fields: no whole-block check then
    if any(v is MISSING for v in kwargs.values()):
        return BAD
    obj = cls(**kwargs)
    check = ctx.checks.get(cls)
    if check is not None:
        # Check the block as a whole even when some optional fields are bad (they stand at their defaults);
        # drop what it says about those fields, which already have their problem.
        first_new = len(ctx.problems)
        obj = check(obj, path, ctx)
        prefixes = tuple(f"{path}.{name}{end}" for name in bad for end in (":", ".", "["))
        ctx.problems[first_new:] = [p for p in ctx.problems[first_new:] if not p.startswith(prefixes)]
    return BAD if len(ctx.problems) > before else obj
