"""Named presets and JSON round trips for the models' frozen dataclass configs."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self


class PresetConfig:
    """Mixin for a frozen dataclass config: `preset(name, **overrides)`, `to_dict`, `from_dict`.

    A subclass sets `PRESETS` (name -> config) after its table is defined and `KIND` for messages.
    """

    PRESETS: ClassVar[dict[str, Any]] = {}
    KIND: ClassVar[str] = "model"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.KIND} preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return dataclasses.replace(cls.PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)
