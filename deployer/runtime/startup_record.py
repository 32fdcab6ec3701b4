"""Planned against actual (issue 11): the memory figures each started container printed,
recorded in the deployment's state beside the plan's prediction, for `status` to compare."""

from __future__ import annotations

from typing import Any

from deployer.deployment import DeploymentDir
from deployer.plan import DeploymentPlan
from deployer.runtime.results import ApplyResult
from deployer.startup_check import (
    STATE_KEY,
    StartupComparison,
    StartupFigures,
    check_plan,
    compare,
    recorded_figures,
)

COMPARISON_KEY = "startup_vs_plan"  # service -> StartupComparison.to_dict(), as last recorded


def _section(state: dict[str, Any], key: str) -> dict[str, Any]:
    value = state.get(key)
    return dict(value) if isinstance(value, dict) else {}


def record_startup(directory: DeploymentDir, plan: DeploymentPlan, result: ApplyResult) -> bool:
    """Record the figures of every service this run started; a service started again without
    figures (its log did not have them) loses its old ones, which described another start.
    True when the state changed."""
    started = {o.service: o.startup for o in result.outcomes if o.startup is not None}
    if not started:
        return False
    state = directory.load_state()
    figures, comparisons = _section(state, STATE_KEY), _section(state, COMPARISON_KEY)
    for name, printed in started.items():
        if printed == StartupFigures():
            figures.pop(name, None)
            comparisons.pop(name, None)
            continue
        figures[name] = printed.to_dict()
        comparisons[name] = compare(plan.service(name), printed).to_dict()
    state[STATE_KEY], state[COMPARISON_KEY] = figures, comparisons
    directory.save_state(state)
    return True


def startup_comparisons(
    plan: DeploymentPlan | None, state: dict[str, Any]
) -> tuple[StartupComparison, ...]:
    """The plan's figures against the recorded ones, per planned service that has them."""
    if plan is None:
        return ()
    return check_plan(plan.services, recorded_figures(state))
