"""How `up`, `restart`, `status` and `--dry-run` look: progress lines, result and status tables,
failure reports. Colour only for states and health, only on a terminal without NO_COLOR."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import click

from deployer.cli.common import is_terminal, table, use_color

if TYPE_CHECKING:
    from deployer.plan import DeploymentPlan
    from deployer.runtime import Action, ApplyResult, Progress, ServiceStatus
    from deployer.startup_check import StartupComparison

# Stage and state colours; only ever applied when the stream is a terminal and NO_COLOR is unset.
_COLOURS = {
    "healthy": "green",
    "running": "green",
    "ok": "green",
    "failed": "red",
    "exited": "red",
    "dead": "red",
    "unhealthy": "red",
    "missing": "red",
    "FAIL": "red",
    "restarting": "yellow",
    "starting": "yellow",
    "loading model": "yellow",
    "not started": "yellow",
    "created": "yellow",
    "paused": "yellow",
}
_ACTION_WORDS = {"noop": "keep"}
_DONE_WORDS = {
    "create": "created",
    "recreate": "recreated",
    "start": "started",
    "restart": "restarted",
    "noop": "unchanged",
    "remove": "removed",
}


def paint(text: str, colour: bool, key: str | None = None) -> str:
    fg = _COLOURS.get(key or text)
    return click.style(text, fg=fg) if colour and fg else text


def stderr_colour() -> bool:
    return use_color(sys.stderr)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


class ProgressPrinter:
    """Renders runtime progress on stderr: a live block on a terminal, one line per change
    (and a heartbeat every 30 s) otherwise."""

    HEARTBEAT_S = 30.0

    def __init__(self, services: Sequence[str], stream: IO[str] | None = None) -> None:
        from deployer.runtime import ProgressBoard

        self.stream = stream or sys.stderr
        self.live = is_terminal(self.stream)
        self.colour = use_color(self.stream)
        self.order = list(services)
        self.width = max((len(s) for s in services), default=8)
        self.board = ProgressBoard()
        self.drawn = 0
        self.last_line: dict[str, float] = {}

    def __call__(self, event: Progress) -> None:
        changed = self.board.update(event)
        if self.live:
            self._draw()
            return
        now = time.monotonic()
        if changed or now - self.last_line.get(event.service, 0) >= self.HEARTBEAT_S:
            self.last_line[event.service] = now
            self.stream.write(self._line(event) + "\n")
            self.stream.flush()

    def _line(self, event: Progress, colour: bool | None = None) -> str:
        colour = self.colour if colour is None else colour
        stage = paint(event.stage.ljust(13), colour, event.stage)
        detail = f"  {event.detail}" if event.detail else ""
        return (
            f"  {event.service.ljust(self.width)}  {stage} {duration(event.elapsed_s):>6}{detail}"
        )

    def _columns(self) -> int:
        """The terminal's width now (it may have been resized since the last draw)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def _fit(self, event: Progress, room: int) -> str:
        """The event's line in at most `room` columns: one terminal row each, so moving the
        cursor up one row per service redraws the block in place (D29)."""
        plain = self._line(event, colour=False)
        return plain[:room] if len(plain) > room else self._line(event)

    def _draw(self) -> None:
        room = max(1, self._columns() - 1)  # a line filling the last column wraps on some
        events = [self.board.stages[s] for s in self.order if s in self.board.stages]
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F")
        for event in events:
            self.stream.write("\x1b[2K" + self._fit(event, room) + "\n")
        self.drawn = len(events)
        self.stream.flush()


def say_interrupted(board: Any, terminated: bool = False) -> None:
    """Name what an interrupted `up`/`restart` left running; after SIGTERM those containers
    were given their restart policy (the runtime does it), after Ctrl-C not yet."""
    started = board.started()
    if started:
        word = "terminated" if terminated else "interrupted"
        policy = " with their restart policy" if terminated else ""
        click.echo(
            f"{word}: started containers keep running ({', '.join(started)}){policy}; "
            "`qwen-deploy status` shows them, `qwen-deploy up` carries on, "
            "`qwen-deploy down` stops them",
            err=True,
        )


def echo_failures(result: ApplyResult) -> None:
    colour = stderr_colour()
    for outcome in result.failed:
        stage = paint(outcome.stage, colour)
        click.echo(f"\n{stage}: {outcome.service}: {outcome.message}", err=True)
        if outcome.log_excerpt:
            click.echo(f"  last log lines of {outcome.service}:", err=True)
            for line in outcome.log_excerpt:
                click.echo(f"    | {line}", err=True)
        for finding in outcome.findings:
            click.echo(f"  advice: {finding.advice}", err=True)
        if outcome.log_excerpt:
            click.echo(
                f"  the container is stopped and kept: `qwen-deploy logs {outcome.service}`",
                err=True,
            )


def result_table(result: ApplyResult, plan: DeploymentPlan) -> str:
    colour = use_color()
    actions = {a.service: a for a in result.actions}
    rows = []
    for outcome in result.outcomes:
        action = actions[outcome.service]
        took = (
            duration(outcome.ready_s - outcome.started_s)
            if outcome.ready_s is not None and outcome.started_s is not None
            else "-"
        )
        state = "ready" if outcome.ok else "failed"
        rows.append(
            [
                outcome.service,
                _ACTION_WORDS.get(action.kind, action.kind),
                paint(state, colour, "healthy" if outcome.ok else "failed"),
                took,
                plan.base_url(outcome.service) + "/v1",
            ]
        )
    rows += [[a.service, "removed", "-", "-", "-"] for a in result.actions if a.kind == "remove"]
    return table(["SERVICE", "ACTION", "RESULT", "TOOK", "URL"], rows)


def summary(result: ApplyResult) -> str:
    counts: dict[str, int] = {}
    for action in result.actions:
        word = _DONE_WORDS.get(action.kind, action.kind)
        counts[word] = counts.get(word, 0) + 1
    what = ", ".join(f"{n} {word}" for word, n in counts.items())
    ready = sum(1 for o in result.outcomes if o.ok)
    return f"{ready}/{len(result.outcomes)} services ready in {result.elapsed_s:.1f} s ({what})"


def dry_run_table(actions: Sequence[Action]) -> str:
    rows = [[_ACTION_WORDS.get(a.kind, a.kind), a.service, a.reason] for a in actions]
    return table(["ACTION", "SERVICE", "WHY"], rows)


def verify_cell(entry: Mapping[str, Any] | None, colour: bool, now: datetime) -> str:
    if not entry:
        return "-"
    from deployer.runtime import parse_docker_time

    when = parse_docker_time(str(entry.get("at", "")))
    ago = f" {duration((now - when).total_seconds())} ago" if when else ""
    if entry.get("ok"):
        return paint("ok", colour) + ago
    failed = ",".join(str(c) for c in entry.get("failed") or []) or "?"
    return paint("FAIL", colour) + f" {failed}{ago}"


def _row_note(row: ServiceStatus) -> str:
    if row.foreign:
        return " (foreign)"
    return "" if row.in_plan else " (not in plan)"


def status_table(rows: Sequence[ServiceStatus], colour: bool, now: datetime) -> str:
    out = []
    for row in rows:
        health = row.health if row.health not in ("none",) else "-"
        state = row.state
        if row.state == "exited" and row.exit_code is not None:
            state = f"exited ({row.exit_code})"
        if row.up_to_date is False:
            state += " *"
        out.append(
            [
                row.service + _row_note(row),
                row.model,
                row.gpus,
                str(row.port or "-"),
                paint(state, colour, row.state),
                paint(health, colour),
                duration(row.uptime_s),
                str(row.restart_count),
                # A result about a container that is gone says nothing about the service now.
                verify_cell(row.verify if row.container else None, colour, now),
            ]
        )
    headers = ["SERVICE", "MODEL", "GPUS", "PORT", "STATE", "HEALTH", "UPTIME", "RESTARTS"]
    return table([*headers, "VERIFIED"], out)


_FIGURE_WORDS = {
    "model_loading_gib": "model loading",
    "available_kv_cache_gib": "KV cache memory",
    "kv_cache_tokens": "KV cache size",
}


def _figure(figure: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} tokens" if figure == "kv_cache_tokens" else f"{value:.2f} GiB"


def startup_table(comparisons: Sequence[StartupComparison], colour: bool) -> str:
    """What each service's vLLM printed at start-up beside what the plan predicted."""
    rows = []
    for comparison in comparisons:
        for f in comparison.figures:
            diff = "-" if f.diff_percent is None else f"{f.diff_percent:+.1f}%"
            rows.append(
                [
                    comparison.service,
                    _FIGURE_WORDS.get(f.figure, f.figure),
                    _figure(f.figure, f.predicted),
                    _figure(f.figure, f.actual),
                    paint(diff, colour, "failed") if f.warn else diff,
                ]
            )
    return table(["SERVICE", "AT START-UP", "PLANNED", "VLLM PRINTED", "DIFF"], rows)
