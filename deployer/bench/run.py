"""A saved bench run: when, with which options, on which plan and GPUs, and what it measured;
its JSON both ways."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from deployer.bench.interference import interference, shared_gpu_neighbours
from deployer.bench.samples import Point
from deployer.errors import BenchError

BENCH_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchRun:
    """A saved run: when, with which options, on which plan and GPUs, and what it measured."""

    run_id: str
    deployment: str
    started_at: str
    finished_at: str
    options: dict[str, Any]
    plan: dict[str, Any]  # the deployment's plan.json as it was
    inventory: dict[str, Any]
    points: tuple[Point, ...]
    skipped: tuple[str, ...] = ()
    interrupted: str | None = None  # what was running when Ctrl-C came
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.service for p in self.points))

    @property
    def engine(self) -> str:
        return str(self.plan.get("engine", "?"))

    def shared(self) -> dict[str, tuple[str, ...]]:
        return shared_gpu_neighbours(self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": BENCH_SCHEMA_VERSION,
            "run_id": self.run_id,
            "deployment": self.deployment,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "interrupted": self.interrupted,
            "options": self.options,
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "points": [p.to_dict() for p in self.points],
            "interference": [
                {**asdict(i), "shares_gpu_with": list(i.shares_gpu_with)}
                for i in interference(self.points, self.shared())
            ],
            "plan": self.plan,
            "inventory": self.inventory,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "run.json") -> BenchRun:
        if raw.get("schema_version") != BENCH_SCHEMA_VERSION:
            raise BenchError(
                f"{source}: schema_version {raw.get('schema_version')!r} is not "
                f"{BENCH_SCHEMA_VERSION}"
            )
        try:
            return cls(
                run_id=str(raw["run_id"]),
                deployment=str(raw["deployment"]),
                started_at=str(raw["started_at"]),
                finished_at=str(raw["finished_at"]),
                options=dict(raw["options"]),
                plan=dict(raw["plan"]),
                inventory=dict(raw["inventory"]),
                points=tuple(Point.from_dict(p) for p in raw["points"]),
                skipped=tuple(raw.get("skipped", ())),
                interrupted=raw.get("interrupted"),
                notes=tuple(raw.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(f"{source} is not a valid bench run ({exc!r})") from None
