"""plan.json is read back by every command: check that each field of the typed plan has the
type its dataclass declares, so that a hand-edited file is a state error here and not a crash
somewhere later."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from enum import Enum
from typing import Any

from deployer.plan import DeploymentPlan


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check(value: Any, hint: Any, where: str) -> None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        problems = []
        for option in typing.get_args(hint):
            try:
                _check(value, option, where)
                return
            except TypeError as exc:
                problems.append(str(exc))
        raise TypeError(problems[0])
    if hint is type(None):
        if value is not None:
            raise TypeError(f"{where}: expected null, got {value!r:.40}")
        return
    if origin is tuple:
        if not isinstance(value, tuple):
            raise TypeError(f"{where}: expected a list, got {value!r:.40}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            for i, item in enumerate(value):
                _check(item, args[0], f"{where}[{i}]")
        else:
            if len(value) != len(args):
                raise TypeError(f"{where}: expected {len(args)} items")
            for i, (item, arg) in enumerate(zip(value, args, strict=True)):
                _check(item, arg, f"{where}[{i}]")
        return
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise TypeError(f"{where}: expected an object, got {value!r:.40}")
        for field in dataclasses.fields(hint):
            _check(getattr(value, field.name), _hints(hint)[field.name], f"{where}.{field.name}")
        return
    if isinstance(hint, type) and issubclass(hint, Enum):
        if not isinstance(value, hint):
            raise TypeError(f"{where}: expected one of {[m.value for m in hint]}")
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false, got {value!r:.40}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 1 << 62:
            raise TypeError(f"{where}: expected an integer, got {value!r:.40}")
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            raise TypeError(f"{where}: expected a number, got {value!r:.40}")
    elif hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r:.40}")
    else:  # pragma: no cover - a field type this checker does not know yet
        raise TypeError(f"{where}: cannot check the type {hint!r}")


def check_plan_types(plan: DeploymentPlan) -> None:
    """TypeError naming the first field whose value does not have its declared type."""
    _check(plan, DeploymentPlan, "plan")
    if not plan.services:
        raise TypeError("plan.services: no services")
