"""The typed converter: parsed YAML into dataclasses, numbers as BasicSR writes them, paths, every problem at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from ribsr.train.convert import BAD, Context, build, convert, option


@dataclass(frozen=True)
class Inner:
    kind: str = option("a", choices=("a", "b"), aliases={"alpha": "a"})
    rate: float = option(1.0, gt=0)


@dataclass(frozen=True)
class Block:
    count: int = option(gt=0)
    lr: float = option(1e-3, gt=0)
    decay: float = option(0.0, ge=0)
    betas: tuple[float, float] = option((0.9, 0.999), ge=0, lt=1)
    steps: tuple[int, ...] = option((), gt=0)
    weights: dict[str, float] | None = option(None, ge=0)
    flag: bool = False
    root: Path | None = None
    inner: Inner = Inner()


def run(value: object, tp: object = Block, *, base_dir: Path = Path("/base"), **ctx_kwargs) -> tuple[object, Context]:
    ctx = Context(base_dir=base_dir, **ctx_kwargs)
    out = build(tp, value, "blk", ctx) if dataclasses.is_dataclass(tp) else convert(value, tp, {}, "blk", ctx)
    return out, ctx


def problems_of(value: object, **kwargs) -> list[str]:
    out, ctx = run(value, **kwargs)
    assert out is BAD
    return ctx.problems


# ---------------------------------------------------------------------- numbers as BasicSR writes them
def test_numbers_written_as_strings_or_floats() -> None:
    out, ctx = run({"count": "5e5", "lr": "5e-4", "betas": ["0.9", 0.99], "steps": [1000.0, "2000"]})
    assert ctx.problems == []
    assert out.count == 500000 and isinstance(out.count, int)
    assert out.lr == 5e-4 and isinstance(out.lr, float)
    assert out.betas == (0.9, 0.99) and out.steps == (1000, 2000)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("lr", True, "must be a finite number, got True"),
    ("lr", "fast", "must be a finite number, got 'fast'"),
    ("lr", ".inf", "must be a finite number, got '.inf'"),
    ("decay", -0.1, "must be a non-negative number, got -0.1"),
    ("betas", [0.9], "must be a list of 2 numbers, got [0.9]"),
    ("flag", "yes", "must be true or false, got 'yes'"),
    ("weights", [1], "must be a mapping, got [1]"),
])
def test_bad_values(key: str, value: object, message: str) -> None:
    assert problems_of({"count": 1, key: value}) == [f"blk.{key}: {message}"]


def test_bad_integers_and_bounds_are_all_reported() -> None:
    assert problems_of({"count": 1000.5, "steps": [250000, "x", 0], "betas": [0.5, 1.0]}) == [
        "blk.count: must be an integer, got 1000.5",
        "blk.betas[1]: must be a number >= 0 and < 1, got 1.0",
        "blk.steps[1]: must be an integer, got 'x'",
        "blk.steps[2]: must be a positive integer, got 0",
    ]
    assert problems_of({"count": True}) == ["blk.count: must be an integer, got True"]


# ---------------------------------------------------------------------- keys, choices, nesting
def test_missing_unknown_and_nested_problems() -> None:
    problems = problems_of({"cuda": True, "inner": {"kind": "c", "rate": 0}, "weights": {"x": -1}})
    assert [p.split(" (known")[0] for p in problems] == [
        "blk.cuda: unknown key",
        "blk.count: missing",
        "blk.weights.x: must be a non-negative number, got -1",
        "blk.inner.kind: must be one of ['a', 'b'] (or 'alpha'), got 'c'",
        "blk.inner.rate: must be a positive number, got 0",
    ]
    out, ctx = run({"count": 1, "inner": {"kind": "alpha"}, "root": None})
    assert ctx.problems == [] and out == Block(count=1, inner=Inner(kind="a"), root=None)
    assert problems_of([1, 2]) == ["blk: must be a mapping, got [1, 2]"]


def test_ignorable_keys_are_named_not_reported() -> None:
    out, ctx = run({"count": 1, "phase": "train"}, ignorable={Block: frozenset({"phase"})})
    assert out == Block(count=1) and ctx.problems == [] and ctx.ignored == ["blk.phase"]


def test_block_checks_see_the_whole_block_and_skip_bad_fields() -> None:
    def check(b: Block, path: str, ctx: Context) -> Block:
        if b.lr > b.decay:
            ctx.problem(f"{path}.lr", "must not exceed decay")
        ctx.problem(f"{path}.decay", "says something about a bad field")
        return dataclasses.replace(b, flag=True)

    out, ctx = run({"count": 1, "lr": 1.0, "decay": 2.0}, checks={Block: check})
    assert out is BAD and ctx.problems == ["blk.decay: says something about a bad field"]
    out, ctx = run({"count": 1, "lr": 1.0, "decay": "x"}, checks={Block: check})
    assert ctx.problems == ["blk.decay: must be a finite number, got 'x'", "blk.lr: must not exceed decay"]

    def normalise(b: Block, path: str, ctx: Context) -> Block:
        return dataclasses.replace(b, flag=True)

    out, ctx = run({"count": 1}, checks={Block: normalise})
    assert out == Block(count=1, flag=True)


# ---------------------------------------------------------------------- paths
def test_paths_expand_and_resolve_against_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIBSR_TEST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = tmp_path / "conf"
    for text, expected in [("$RIBSR_TEST_DATA/DF2K/HR", tmp_path / "data" / "DF2K" / "HR"),
                           ("${RIBSR_TEST_DATA}/DF2K/../DF2K/LR", tmp_path / "data" / "DF2K" / "LR"),
                           ("~/meta.txt", tmp_path / "home" / "meta.txt"),
                           ("../sets/Set5", tmp_path / "sets" / "Set5"),
                           ("HR", base / "HR")]:
        out, ctx = run(text, Path, base_dir=base)
        assert ctx.problems == [] and out == expected, text


def test_unset_environment_variables_and_empty_paths_are_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIBSR_UNSET_A", raising=False)
    assert problems_of({"count": 1, "root": "$RIBSR_UNSET_A/HR"}) == [
        "blk.root: environment variable $RIBSR_UNSET_A is not set (in '$RIBSR_UNSET_A/HR')"]
    assert problems_of({"count": 1, "root": ""}) == ["blk.root: must be a non-empty path, got ''"]


def test_a_type_without_converter_is_a_bug_not_a_problem() -> None:
    with pytest.raises(TypeError, match="no converter for"):
        run([1], list[int])
