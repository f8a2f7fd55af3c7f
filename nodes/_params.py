"""Node parameters: declared on the class with a type and a default, filled from the launch file.

    class Camera(Node):
        fps = Param(30.0, "frames per second")
        source = Param("auto", "device index, video file, URL or image folder")

Inside the node ``self.fps`` is the value in force. The type is the default's type unless
given; values from the launch file or ``--param key=value`` are checked against it, and against
``choices`` or ``low``/``high`` when declared (``Param(0, "...", choices=(0, 1))``,
``Param(0.5, "...", low=0.0, high=1.0)``): ``shmlaunch check`` then refuses a value the node
would refuse, before anything starts.
"""

from __future__ import annotations

from typing import Any

import yaml

_MISSING = object()


class ParamError(ValueError):
    """A parameter that the node does not declare, or a value of the wrong type."""


class Param:
    """A typed node parameter with a default (a data descriptor on the Node class)."""

    def __init__(self, default: Any = _MISSING, help: str = "", *, type: type | tuple[type, ...] | None = None,
                 choices: tuple | None = None, low: float | None = None, high: float | None = None) -> None:
        if type is None:
            if default is _MISSING or default is None:
                raise TypeError("Param needs a default or an explicit type")
            type = default.__class__
        self.default = default
        self.help = help
        self.type = type
        self.choices = None if choices is None else tuple(choices)
        self.low, self.high = low, high
        self.name = ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, node, owner=None):
        if node is None:
            return self
        return node._param_values[self.name]

    def __set__(self, node, value) -> None:
        node._param_values[self.name] = self.coerce(value, node._node_name)

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join(t.__name__ for t in types)

    def allowed(self) -> str:
        """What values are allowed beyond the type ('' when any of the type)."""
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.low is not None and self.high is not None:
            return f"from {self.low} to {self.high}"
        if self.low is not None:
            return f"at least {self.low}"
        return "" if self.high is None else f"at most {self.high}"

    def coerce(self, value: Any, node_name: str) -> Any:
        """``value`` as this parameter's type (int -> float is allowed), or ParamError."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if value is None and self.default is None:
            return None
        is_bool = isinstance(value, bool)  # True is an int in Python: never accept it for int or float
        if is_bool == (bool in types) and isinstance(value, types):
            return self._in_range(value, node_name)
        if float in types and isinstance(value, int) and not is_bool:
            return self._in_range(float(value), node_name)
        if tuple in types and isinstance(value, list):
            return tuple(value)
        raise ParamError(
            f"parameter {self.name!r} of node {node_name!r} must be {self.type_name()}, got {value!r} ({type(value).__name__})"
        )


    def _in_range(self, value: Any, node_name: str) -> Any:
        ok = ((self.choices is None or value in self.choices) and (self.low is None or value >= self.low)
              and (self.high is None or value <= self.high))
        if not ok:
            raise ParamError(f"parameter {self.name!r} of node {node_name!r} must be {self.allowed()}, got {value!r}")
        return value


def declared_params(cls) -> dict[str, Param]:
    """Every Param of a Node class, base classes included, by name."""
    out: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Param):
                out[name] = value
    return out


def parse_cli_value(text: str) -> Any:
    """A ``--param key=value`` value: YAML scalar rules, so 30 is an int and 'abc' a string."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def resolve_params(cls, node_name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Declared defaults overlaid with ``given``; unknown names and wrong types raise ParamError."""
    declared = declared_params(cls)
    values = {}
    for key, value in given.items():
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ParamError(f"node {node_name!r} ({cls.__module__}:{cls.__qualname__}) has no parameter {key!r}; it has: {known}")
        values[key] = declared[key].coerce(value, node_name)
    for name, param in declared.items():
        if name not in values:
            if param.required:
                raise ParamError(f"node {node_name!r} needs parameter {name!r} ({param.type_name()}): {param.help}".rstrip(": "))
            values[name] = param.default
    return values
