"""The gateway in front of three stand-in tiers (real processes, real HTTP on loopback): every
endpoint, auth, routing, errors, admission and fallback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deployer.gateway.config import GatewaySpec, KeySpec, Limits
from tests.integration.gateway_support import Deployment, start_deployment, wait_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    spec = GatewaySpec(
        keys=(
            KeySpec("default"),
            KeySpec("admin", admin=True),
            KeySpec("small", tiers=("micro",), rpm=3),
        ),
        limits=Limits(health_interval_s=0.3, max_body_bytes=256 * 1024, first_byte_timeout_s=5),
    )
    d = start_deployment(tmp_path_factory.mktemp("gw"), spec)
    yield d
    d.stop()


def chat(d: Deployment, model: str, key: str = "default", **extra: object) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "bonjour à tous"}]}
    return requests.post(
        d.gateway.url + "/v1/chat/completions",
        headers=d.headers(key),
        json={**body, "max_tokens": 40, **extra},
        timeout=30,
    )


def gateway_counter(d: Deployment, name: str, label: str) -> float:
    text = requests.get(d.gateway.url + "/metrics", headers=d.headers(), timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"qwen_deploy_gateway_{name}{{") and label in line
    )


def sse_events(response: requests.Response) -> list[str]:
    return [
        line[6:] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")
    ]


def test_models_list_every_name_with_context_and_state(deployment: Deployment) -> None:
    answer = requests.get(deployment.gateway.url + "/v1/models", headers=deployment.headers())
    assert answer.status_code == 200
    cards = {c["id"]: c for c in answer.json()["data"]}
    for service in deployment.plan.services:
        for name in (service.name, service.served_model_name, *service.aliases):
            assert cards[name]["tier"] == service.name
            assert cards[name]["max_model_len"] == service.max_model_len
            assert cards[name]["state"] == "ready"
    assert cards["auto"]["max_model_len"] == max(s.max_model_len for s in deployment.plan.services)


@pytest.mark.parametrize(
    ("model", "tier"), [("mini", "mini"), ("Qwen/Qwen3-32B-AWQ", "medium"), ("1.7b", "micro")]
)
def test_chat_by_any_name_reaches_that_tier_with_its_key(
    deployment: Deployment, model: str, tier: str
) -> None:
    answer = chat(deployment, model)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-qwen-deploy-tier"] == tier
    assert answer.headers["x-request-id"]
    body = answer.json()
    served = next(s.served_model_name for s in deployment.plan.services if s.name == tier)
    assert body["model"] == served
    assert "bonjour à tous" in body["choices"][0]["message"]["content"]


def test_completions_and_auto_pick_the_smallest_tier(deployment: Deployment) -> None:
    answer = requests.post(
        deployment.gateway.url + "/v1/completions",
        headers=deployment.headers(),
        json={"model": "auto", "prompt": "one two three", "max_tokens": 5},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-qwen-deploy-tier"] == "micro"
    assert answer.json()["usage"]["completion_tokens"] == 5


def test_auto_sends_a_long_prompt_to_a_tier_that_holds_it(deployment: Deployment) -> None:
    # micro holds 16384 tokens: a prompt of ~20000 goes to mini (32768).
    words = " ".join(["mot"] * 20000)
    answer = requests.post(
        deployment.gateway.url + "/v1/chat/completions",
        headers=deployment.headers(),
        json={"model": "auto", "messages": [{"role": "user", "content": words}], "max_tokens": 8},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-qwen-deploy-tier"] in ("mini", "medium")
    prompt = answer.json()["usage"]["prompt_tokens"]
    assert prompt > 16384 - 8  # it really would not have fitted micro


def test_auto_names_the_largest_context_when_nothing_fits(deployment: Deployment) -> None:
    words = " ".join(["mot"] * 33000)
    answer = chat(deployment, "auto", messages=[{"role": "user", "content": words}])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "largest context available is 32768 tokens" in error["message"]
    assert error["request_id"] == answer.headers["x-request-id"]


def test_streams_pass_through_with_usage_counted_and_not_leaked(deployment: Deployment) -> None:
    before = deployment.tiers["mini"].counter("vllm:generation_tokens_total")
    counted = gateway_counter(deployment, "completion_tokens_total", 'tier="mini"')
    with chat(deployment, "mini", stream=True) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["x-accel-buffering"] == "no"
        events = sse_events(answer)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c.get("usage") is None for c in chunks)  # the client did not ask for usage
    generated = deployment.tiers["mini"].counter("vllm:generation_tokens_total") - before
    assert generated > 0
    assert (
        gateway_counter(deployment, "completion_tokens_total", 'tier="mini"') - counted == generated
    )
    with chat(deployment, "mini", stream=True, stream_options={"include_usage": True}) as answer:
        usage = [json.loads(e) for e in sse_events(answer)[:-1]][-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == generated


def test_auth_and_permissions(deployment: Deployment) -> None:
    url = deployment.gateway.url
    assert requests.get(url + "/v1/models").status_code == 401
    wrong = requests.get(url + "/v1/models", headers={"Authorization": "Bearer not-a-key-at-all"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]["message"]
    # A tier's own key is not a gateway key.
    tier_key = {"Authorization": f"Bearer {deployment.tiers['mini'].key}"}
    assert requests.get(url + "/v1/models", headers=tier_key).status_code == 401
    assert requests.get(url + "/health").status_code == 200
    assert requests.get(url + "/api/v1/health").status_code == 200
    listed = requests.get(url + "/v1/models", headers=deployment.headers("small")).json()["data"]
    assert {c["tier"] for c in listed} == {"micro", "auto"}
    denied = chat(deployment, "mini", key="small")
    assert denied.status_code == 403 and "may not use tier mini" in denied.text
    assert chat(deployment, "auto", key="small").headers["x-qwen-deploy-tier"] == "micro"


def test_per_key_requests_per_minute(deployment: Deployment) -> None:
    statuses = [chat(deployment, "micro", key="small").status_code for _ in range(4)]
    assert 429 in statuses
    limited = chat(deployment, "micro", key="small")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "3 requests per minute" in limited.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (
            '{"model": "mini", "messages": [{"role": "user", "content": "caf\xe9"}]}'.encode(
                "latin-1"
            ),
            400,
            "byte 0xe9 at offset",
        ),
        (
            b'{"model": "Qwen/Qwen3-9B", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "does not exist",
        ),
        (b'{"model": "mini"}', 400, "messages: expected a non-empty list"),
        (b'{"model": "mini", "messages": []}', 400, "messages: expected a non-empty list"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (
            b'{"model": "mini", "messages": [{"role": "user", "content": "'
            + b"x" * 300000
            + b'"}]}',
            413,
            "limit",
        ),
    ],
)
def test_bad_bodies_get_openai_shaped_errors(
    deployment: Deployment, body: bytes, status: int, says: str
) -> None:
    answer = requests.post(
        deployment.gateway.url + "/v1/chat/completions",
        headers={**deployment.headers(), "Content-Type": "application/json"},
        data=body,
        timeout=30,
    )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert says in error["message"] and error["code"] == status and error["request_id"]


def test_a_tiers_own_error_comes_back_in_its_shape(deployment: Deployment) -> None:
    answer = chat(deployment, "micro", max_tokens=999999)
    assert answer.status_code == 400
    assert answer.headers["x-qwen-deploy-tier"] == "micro"
    assert (
        "max_tokens=999999 cannot be greater than max_model_len=16384"
        in answer.json()["error"]["message"]
    )


def test_seed_004_chat_and_stream_with_thinking(deployment: Deployment) -> None:
    url = deployment.gateway.url
    answer = requests.post(
        url + "/api/v1/chat",
        headers=deployment.headers(),
        json={"message": "你好", "history": []},
        timeout=30,
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True and body["error"] is None and "你好" in body["response"]
    assert body["thinking"]
    off = requests.post(
        url + "/api/v1/chat",
        headers=deployment.headers(),
        json={"message": "hi", "thinking": False, "model": "mini"},
        timeout=30,
    ).json()
    assert off["thinking"] is None and off["tier"] == "mini"
    with requests.post(
        url + "/api/v1/chat/stream",
        headers=deployment.headers(),
        json={
            "message": "请解释",
            "history": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        },
        stream=True,
        timeout=30,
    ) as stream:
        events = [json.loads(e) for e in sse_events(stream)]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert "thinking" in kinds and "chunk" in kinds
    assert kinds.index("thinking") < kinds.index("chunk")
    text = "".join(e["content"] for e in events if e["type"] == "chunk")
    assert "请解释" in text
    bad = requests.post(
        url + "/api/v1/chat", headers=deployment.headers(), json={"mesage": "x"}, timeout=30
    )
    assert (
        bad.status_code == 400
        and bad.json()["success"] is False
        and "unknown field 'mesage'" in bad.json()["error"]
    )


def test_seed_004_health_info_and_load(deployment: Deployment) -> None:
    url = deployment.gateway.url
    health = requests.get(url + "/api/v1/health").json()
    assert health["status"] == "healthy" and set(health["tiers"]) == {"medium", "mini", "micro"}
    info = requests.get(url + "/api/v1/model/info", headers=deployment.headers()).json()
    assert info["model_name"] == "Qwen/Qwen3-32B-AWQ" and info["is_loaded"] is True
    assert info["device"] == "cuda:0,cuda:1"
    assert {t["tier"] for t in info["tiers"]} == {"medium", "mini", "micro"}
    assert all(t["model_size"] > 0 for t in info["tiers"])
    assert (
        requests.post(
            url + "/api/v1/model/load", headers=deployment.headers(), json={"tier": "mini"}
        ).status_code
        == 403
    )
    loaded = requests.post(
        url + "/api/v1/model/load", headers=deployment.headers("admin"), json={"tier": "mini"}
    )
    assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"


def test_a_stopped_tier_degrades_health_and_answers_503_alone(deployment: Deployment) -> None:
    mini = deployment.tiers["mini"]
    mini.stop()
    try:
        wait_state(deployment, "mini", "down")
        url = deployment.gateway.url
        health = requests.get(url + "/api/v1/health").json()
        assert health["status"] == "degraded" and "mini" in health["message"]
        refused = chat(deployment, "mini")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "tier mini is down" in refused.json()["error"]["message"]
        models = requests.get(url + "/v1/models", headers=deployment.headers())
        assert models.status_code == 200
        assert {c["id"]: c["state"] for c in models.json()["data"]}["mini"] == "down"
        assert chat(deployment, "micro").status_code == 200
        assert chat(deployment, "medium").status_code == 200
        # Fallback only when asked, and announced.
        moved = requests.post(
            url + "/v1/chat/completions",
            headers={**deployment.headers(), "x-qwen-deploy-fallback": "larger"},
            json={"model": "mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
            timeout=30,
        )
        assert moved.status_code == 200
        assert moved.headers["x-qwen-deploy-tier"] == "medium"
        assert moved.headers["x-qwen-deploy-fallback-from"] == "mini"
        conflict = requests.post(
            url + "/api/v1/model/load", headers=deployment.headers("admin"), json={"tier": "mini"}
        )
        assert conflict.status_code == 409
        assert "qwen-deploy --deployment gwtest restart mini" in conflict.json()["error"]["message"]
    finally:
        mini.start()
    wait_state(deployment, "mini", "ready")
    assert chat(deployment, "mini").status_code == 200


def test_shared_gpu_admission_caps_the_group_then_429(tmp_path: Path) -> None:
    spec = GatewaySpec(
        limits=Limits(health_interval_s=0.3, gpu_inflight=2, queue_timeout_s=0.5, max_queue=1)
    )
    slow = {"STANDIN_TOKENS_PER_SECOND": "20"}
    d = start_deployment(tmp_path, spec, tier_env={"mini": slow, "micro": slow})
    try:
        results: list[requests.Response] = []

        def one(model: str) -> None:
            results.append(chat(d, model, max_tokens=30))

        threads = [
            threading.Thread(target=one, args=(m,))
            for m in ("mini", "micro", "mini", "micro", "micro")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) >= 2 and 429 in statuses, statuses
        rejected = next(r for r in results if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1
        assert "GPU 2 (mini, micro) is busy" in rejected.json()["error"]["message"]
        # medium is on other GPUs: not affected by GPU 2's queue.
        assert chat(d, "medium").status_code == 200
    finally:
        d.stop()


def test_verify_checks_the_gateway_like_a_tier(deployment: Deployment) -> None:
    from dataclasses import replace

    from deployer.gateway.check import verify_gateway
    from deployer.gateway.config import KeySpec

    spec = GatewaySpec(port=deployment.gateway.port, keys=(KeySpec("default"),))
    keys = {"QWEN_DEPLOY_GATEWAY_KEY_DEFAULT": deployment.keys["default"]}
    with requests.Session() as session:
        report = verify_gateway(session, deployment.plan, spec, keys, deadline_s=10)
        assert report.ok, [(c.check, c.detail) for c in report.failures]
        assert [c.check for c in report.checks] == [
            "health", "models", "auth", "tiers", "stream", "seed-chat", "seed-stream",
        ]  # fmt: skip
        assert "MEDIUM->medium" in report.check("tiers").detail
        wrong = verify_gateway(
            session, deployment.plan, spec, {"QWEN_DEPLOY_GATEWAY_KEY_DEFAULT": "nope-nope-nope"}
        )
        assert not wrong.check("models").ok and "401" in wrong.check("models").detail
        elsewhere = replace(spec, port=1)
        down = verify_gateway(session, deployment.plan, elsewhere, keys, deadline_s=0.5)
        assert not down.check("health").ok and down.check("tiers").skipped
