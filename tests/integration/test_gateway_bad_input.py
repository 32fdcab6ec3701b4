"""The gateway's rows of tests/bad_input_cases.py, sent for real: `python -m deployer.gateway`
under uvicorn on a free loopback port, in front of three stand-in tier processes on the host
(no Docker). Each bad request gets its status and one-line message in the shape its path
promises, the gateway keeps serving, and the tiers see only what reached them on purpose."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.bad_input_cases import (
    GATEWAY_CASES,
    GatewayCase,
    check_gateway_outcome,
    send_gateway_case,
)
from tests.integration.gateway_support import Deployment, start_deployment, wait_state

pytestmark = pytest.mark.integration

# The tier must answer these itself: the gateway cannot know that they are wrong.
REACH_A_TIER = {"gw-context-exceeded-tier"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The tri-tier plan with the gateway's default limits and keys (8 MiB bodies)."""
    d = start_deployment(tmp_path_factory.mktemp("gw-bad-input"))
    try:
        for tier in d.tiers:
            wait_state(d, tier, "ready")
        yield d
    finally:
        d.stop()


def tier_requests(d: Deployment) -> dict[str, float]:
    """What each tier has served, by its own metrics: finished requests and prompt tokens."""
    return {
        name: tier.counter("vllm:request_success_total") + tier.counter("vllm:prompt_tokens_total")
        for name, tier in d.tiers.items()
    }


@pytest.mark.parametrize("case", GATEWAY_CASES, ids=lambda c: c.id)
def test_bad_request_gets_its_status_and_one_line_message(
    case: GatewayCase, deployment: Deployment
) -> None:
    before = tier_requests(deployment)
    outcome = send_gateway_case(
        case, "127.0.0.1", deployment.gateway.port, deployment.keys["default"]
    )
    check_gateway_outcome(case, outcome)
    if case.id not in REACH_A_TIER:
        assert tier_requests(deployment) == before
    assert requests.get(deployment.gateway.url + "/health", timeout=5).status_code == 200


def test_the_gateway_still_serves_after_all_of_them(deployment: Deployment) -> None:
    for case in GATEWAY_CASES:  # again, in one go, whatever order the tests above ran in
        check_gateway_outcome(
            case,
            send_gateway_case(
                case, "127.0.0.1", deployment.gateway.port, deployment.keys["default"]
            ),
        )
    before = tier_requests(deployment)
    answer = requests.post(
        deployment.gateway.url + "/v1/chat/completions",
        headers=deployment.headers(),
        json={"model": "mini", "messages": [{"role": "user", "content": "café"}], "max_tokens": 8},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-qwen-deploy-tier"] == "mini"
    after = tier_requests(deployment)  # the count the cases above compare moves for a request
    assert after["mini"] > before["mini"] and after["micro"] == before["micro"], (before, after)
    assert "Traceback" not in deployment.gateway.log()


def test_the_table_names_each_gateway_case_once() -> None:
    ids = [c.id for c in GATEWAY_CASES]
    assert len(ids) == len(set(ids))
    issue_10 = {"not-json", "not-utf8", "unknown-model", "no-messages", "context-exceeded",
                "wrong-key", "too-large"}  # fmt: skip
    assert all(any(kind in i for i in ids) for kind in issue_10), ids
