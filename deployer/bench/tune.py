"""`tune` as a library call: pick the bench run that measured a service, turn its points into
suggestions and, when asked, write the changed settings into a profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.bench.run import BenchRun
from deployer.bench.storage import list_runs, load_run
from deployer.bench.suggest import Suggestion, choose_curve, suggest
from deployer.bench.textfmt import setting_value
from deployer.deployment import DeploymentDir
from deployer.errors import BenchError
from deployer.plan import plan_from_dict
from deployer.profile_edit import write_service_settings

# Plan settings that, when they differ from the run's, make the suggestions relative.
WATCHED = ("max_num_seqs", "max_model_len", "gpu_memory_utilization", "kv_cache_tokens")


@dataclass(frozen=True)
class TuneRequest:
    service: str
    run_ref: str | None = None  # a run id, `latest` or `previous`; None: the latest that measured
    prompt_target: int | None = None
    write_profile: Path | None = None


@dataclass(frozen=True)
class ProfileWrite:
    file: Path
    backup: Path
    settings: dict[str, int | float]


@dataclass(frozen=True)
class TuneResult:
    service: str
    run_id: str
    prompt_target: int
    suggestions: tuple[Suggestion, ...]
    written: ProfileWrite | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        w = self.written
        written = (
            None
            if w is None
            else {"file": str(w.file), "backup": str(w.backup), "settings": w.settings}
        )
        return {
            "service": self.service,
            "run_id": self.run_id,
            "prompt_target": self.prompt_target,
            "suggestions": [s.to_dict() for s in self.suggestions],
            "written": written,
            "notes": list(self.notes),
        }


def find_run(directory: DeploymentDir, service: str, ref: str | None) -> BenchRun:
    """The run asked for, else the latest one with a successful point of the service."""
    if ref is not None:
        return load_run(directory, ref)
    for run in reversed(list_runs(directory)):
        if any(p.service == service and p.ok and p.rate is None for p in run.points):
            return run
    raise BenchError(
        f"no bench run has measured {service}",
        hint=f"run `qwen-deploy bench {service}` first",
    )


def tune(directory: DeploymentDir, request: TuneRequest) -> TuneResult:
    """Suggestions for one service from a saved run, relative to the plan that was measured."""
    current = directory.load_plan().service(request.service)
    name = current.name
    run = find_run(directory, name, request.run_ref)
    measured_plan = plan_from_dict(run.plan)
    measured = measured_plan.service(name)
    suggestions = suggest(measured_plan, name, run.points, request.prompt_target)
    curve = choose_curve(run.points, name, request.prompt_target)
    notes = [
        f"from run {run.run_id} ({run.engine}): {curve[0].mode} points at prompt "
        f"{curve[0].prompt_target} tokens, concurrency "
        f"{', '.join(str(p.concurrency) for p in curve)}"
    ]
    changed = [
        f"{key} {getattr(measured, key)} -> {getattr(current, key)}"
        for key in WATCHED
        if getattr(measured, key) != getattr(current, key)
    ]
    if changed:
        notes.append(
            f"the plan changed since that run ({', '.join(changed)}): the suggestions are "
            f"relative to what was measured; bench {name} again to tune the current plan"
        )
    written: ProfileWrite | None = None
    profile = request.write_profile
    if profile is not None:
        settings = {s.setting: s.suggested for s in suggestions if s.changed}
        if settings:
            backup = write_service_settings(profile, name, settings)
            written = ProfileWrite(profile, backup, settings)
            notes.append(
                f"wrote {profile}: "
                + ", ".join(f"services.{name}.{k}: {setting_value(v)}" for k, v in settings.items())
                + f" (previous file: {backup}); check with `qwen-deploy plan --profile "
                f"{profile}`, apply with `qwen-deploy up --profile {profile}`"
            )
        else:
            notes.append(f"nothing written to {profile}: every setting is kept")
    return TuneResult(
        service=name,
        run_id=run.run_id,
        prompt_target=curve[0].prompt_target,
        suggestions=tuple(suggestions),
        written=written,
        notes=tuple(notes),
    )
