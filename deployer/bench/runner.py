"""`bench run` as a library call: check every endpoint answers, run the planned points in order,
aggregate them and save the run under the deployment."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from deployer.bench.arrivals import arrival_times
from deployer.bench.client import Endpoint, Load, SessionFactory, stream_once, synthetic_prompt
from deployer.bench.datasets import load_sharegpt
from deployer.bench.loadgen import run_loads
from deployer.bench.run import BenchRun
from deployer.bench.samples import PointRecord, Slo, aggregate
from deployer.bench.slo import DEFAULT_TARGET
from deployer.bench.storage import bench_root, new_run_id, write_run
from deployer.bench.sweep import PlannedPoint, plan_sweep, requests_for
from deployer.deployment import DeploymentDir
from deployer.errors import BenchError, InventoryError, VerifyFailed
from deployer.plan import DeploymentPlan


def preflight(session: requests.Session, endpoint: Endpoint, thinking: bool) -> str | None:
    """One tiny request before the sweep: why the service cannot be benched, or None."""
    load = Load(endpoint, 1, 16, 4, 1, 60.0, thinking=thinking, timeout_s=60.0)
    result = stream_once(session, load, synthetic_prompt(16, "preflight"), 0, started=0.0)
    return result.error


@dataclass(frozen=True)
class SweepProgress:
    number: int  # 1-based
    total: int
    label: str
    done: int
    limit: int
    elapsed_s: float
    duration_s: float


@dataclass(frozen=True)
class SweepResult:
    records: tuple[PointRecord, ...]
    interrupted: str | None  # the point that was running when Ctrl-C came


def run_sweep(
    endpoints: Mapping[str, Endpoint],
    planned: Sequence[PlannedPoint],
    session_factory: SessionFactory,
    *,
    max_tokens: int,
    requests_per_point: int | None,
    duration_s: float,
    timeout_s: float = 300.0,
    thinking: bool = False,
    burstiness: float = 1.0,
    slo: Slo | None = None,
    prompts: Mapping[str, tuple[str, ...]] | None = None,
    on_progress: Callable[[SweepProgress], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SweepResult:
    """Check every endpoint answers, then run the planned points in order. Ctrl-C ends the
    sweep: the points finished so far are returned, the interrupted one is dropped. `prompts`
    holds each service's dataset prompts (points planned with a dataset use them)."""
    with session_factory() as session:
        for name, endpoint in endpoints.items():
            error = preflight(session, endpoint, thinking)
            if error is not None:
                raise VerifyFailed(
                    f"bench: {name} at {endpoint.base_url} cannot be benched: {error}",
                    hint="see `qwen-deploy verify` and `qwen-deploy status`",
                )
    records: list[PointRecord] = []
    for number, step in enumerate(planned, 1):
        count = requests_for(step.concurrency, requests_per_point, step.rate, duration_s)
        # The same seeded arrivals for every service and point of a rate: comparable runs.
        arrivals = () if step.rate is None else arrival_times(count, step.rate, burstiness)
        loads = [
            Load(
                endpoints[name],
                step.concurrency,
                prompt,
                max_tokens,
                count,
                duration_s,
                thinking=thinking,
                timeout_s=timeout_s,
                arrivals=arrivals,
                prompts=(prompts or {}).get(name, ()) if step.dataset else (),
            )
            for name, prompt in step.loads
        ]
        begin = clock()

        def report(
            done: int,
            limit: int,
            number: int = number,
            step: PlannedPoint = step,
            begin: float = begin,
        ) -> None:
            if on_progress is not None:
                on_progress(
                    SweepProgress(
                        number, len(planned), step.label, done, limit, clock() - begin, duration_s
                    )
                )

        try:
            results = run_loads(loads, session_factory, progress=report, clock=clock)
        except KeyboardInterrupt:
            return SweepResult(tuple(records), step.label)
        for result in results:
            load = result.load
            point = aggregate(
                load.endpoint.service.name,
                step.mode,
                load.concurrency,
                load.prompt_tokens,
                load.max_tokens,
                result.samples,
                result.duration_s,
                result.engine,
                result.stopped_by,
                slo=slo,
                rate=step.rate,
                burstiness=burstiness,
                dataset=step.dataset,
            )
            records.append(PointRecord(point, result.samples))
    return SweepResult(tuple(records), None)


# --- `bench run` ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRequest:
    """What `bench run` was asked to measure (the CLI's options, parsed)."""

    services: tuple[str, ...] = ()  # none: every service of the plan
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    prompt_tokens: tuple[str, ...] = ("128", "1024", "25%")
    max_tokens: int = 128
    requests_per_point: int | None = None
    duration_per_point_s: float = 30.0
    timeout_s: float = 300.0
    mixed: bool = False
    thinking: bool = False
    host: str | None = None
    request_rates: tuple[float, ...] = ()  # open loop at these rates instead of concurrency
    burstiness: float = 1.0
    max_concurrency: int | None = None  # open loop: the cap on requests in flight
    slo: Slo | None = None
    goodput_target: float = DEFAULT_TARGET
    dataset_path: Path | None = None  # a ShareGPT file; None: synthetic prompts

    def options(self, services: Sequence[str]) -> dict[str, Any]:
        """The options as run.json records them (the workload keys only when used)."""
        extra: dict[str, Any] = {}
        if self.request_rates:
            extra |= {
                "request_rates": [r if math.isfinite(r) else "inf" for r in self.request_rates],
                "burstiness": self.burstiness,
                "max_concurrency": self.max_concurrency,
            }
        if self.slo is not None:
            extra |= {"slo": self.slo.to_dict(), "goodput_target": self.goodput_target}
        if self.dataset_path is not None:
            extra |= {"dataset": {"name": "sharegpt", "path": str(self.dataset_path)}}
        return {
            "services": list(services),
            "concurrency": list(self.concurrency),
            "prompt_tokens": list(self.prompt_tokens),
            "max_tokens": self.max_tokens,
            "requests_per_point": self.requests_per_point,
            "duration_per_point_s": self.duration_per_point_s,
            "timeout_s": self.timeout_s,
            "mixed": self.mixed,
            "thinking": self.thinking,
            "host": self.host,
            **extra,
        }


@dataclass(frozen=True)
class BenchOutcome:
    """A saved run and where; `run` is None when Ctrl-C came before any point was measured.
    `interrupted` names the point Ctrl-C stopped (the points before it are saved)."""

    run: BenchRun | None
    path: Path | None
    interrupted: str | None


def measured_inventory(plan: DeploymentPlan) -> dict[str, Any]:
    """The GPUs the run is measured on: NVML now when the plan came from NVML, else (and when
    NVML cannot be read) the inventory the plan was made for."""
    if plan.inventory_source == "nvml":
        try:
            from deployer.nvml import read_inventory

            return {"source": "nvml, read at bench time", **read_inventory().to_dict()}
        except InventoryError:
            pass
    return {
        "source": f"{plan.inventory_source}, as planned",
        "gpus": [asdict(g) for g in plan.gpus],
    }


def run_bench(
    directory: DeploymentDir,
    request: BenchRequest,
    session_factory: SessionFactory,
    *,
    on_progress: Callable[[SweepProgress], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> BenchOutcome:
    """Measure the deployment's services as asked and save the run under bench/<run-id>."""
    plan = directory.load_plan()
    keys = directory.read_env()
    chosen = [plan.service(n) for n in request.services] if request.services else plan.services
    chosen = list({s.name: s for s in chosen}.values())
    for service in chosen:
        # `auth: none` services (planned with --allow-unauthenticated) are called without a key.
        if not keys.get(service.api_key_env) and getattr(service, "auth", "key") != "none":
            raise BenchError(
                f"no API key for {service.name} in the deployment's .env ({service.api_key_env})",
                hint="run `qwen-deploy render` or `qwen-deploy up` again",
            )
    dataset = load_sharegpt(request.dataset_path) if request.dataset_path is not None else None
    prompts: dict[str, tuple[str, ...]] = {}
    if dataset is not None:
        for service in chosen:
            prompts[service.name] = dataset.fitting(service.max_model_len, request.max_tokens)
            if not prompts[service.name]:
                raise BenchError(
                    f"--dataset: no prompt of {dataset.source} fits {service.name}'s context "
                    f"({service.max_model_len} tokens with --max-tokens {request.max_tokens})"
                )
    planned, skipped = plan_sweep(
        chosen,
        request.concurrency,
        request.prompt_tokens,
        request.max_tokens,
        request.mixed,
        rates=request.request_rates,
        max_concurrency=request.max_concurrency,
        dataset=None if dataset is None else dataset.name,
    )
    if not planned:
        raise BenchError("nothing to measure: " + "; ".join(skipped))
    endpoints = {
        s.name: Endpoint(s, s.base_url(request.host), keys.get(s.api_key_env, "")) for s in chosen
    }
    started = now()
    result = run_sweep(
        endpoints,
        planned,
        session_factory,
        max_tokens=request.max_tokens,
        requests_per_point=request.requests_per_point,
        duration_s=request.duration_per_point_s,
        timeout_s=request.timeout_s,
        thinking=request.thinking,
        burstiness=request.burstiness,
        slo=request.slo,
        prompts=prompts,
        on_progress=on_progress,
    )
    if not result.records:
        return BenchOutcome(None, None, result.interrupted)
    run = BenchRun(
        run_id=new_run_id(started, bench_root(directory)),
        deployment=plan.deployment,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=now().isoformat(timespec="seconds"),
        options=request.options([s.name for s in chosen]),
        plan=plan.to_dict(),
        inventory=measured_inventory(plan),
        points=tuple(r.point for r in result.records),
        skipped=skipped,
        interrupted=result.interrupted,
    )
    path = write_run(directory, run, result.records, vllm_json=True)
    return BenchOutcome(run, path, result.interrupted)
