"""`verify` for the gateway, checked like a tier: health, /v1/models lists every tier, 401
without or with a wrong key, one chat through each tier by alias, one stream, one seed-004 chat
(accented, as UTF-8) and one seed-004 stream with a thinking event."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

import requests

from deployer.gateway.guide import ACCENTED_PROMPT, gateway_url
from deployer.gateway.spec import GatewaySpec
from deployer.plan import DeploymentPlan
from deployer.verify import CheckResult, ServiceVerification

SERVICE = "gateway"
REQUEST_TIMEOUT_S = 60.0


class _Failed(Exception):
    pass


def verify_gateway(
    session: requests.Session,
    plan: DeploymentPlan,
    spec: GatewaySpec,
    keys: Mapping[str, str],
    host: str | None = None,
    deadline_s: float = 120.0,
) -> ServiceVerification:
    url = gateway_url(spec, host)
    client = next((k for k in spec.keys if not k.admin), spec.keys[0])
    key = keys.get(client.env_var, "")
    auth = {"Authorization": f"Bearer {key}"}
    end = time.monotonic() + deadline_s

    def post(path: str, body: object, stream: bool = False) -> requests.Response:
        answer = session.post(
            url + path,
            headers={**auth, "Content-Type": "application/json"},
            data=json.dumps(body, ensure_ascii=False).encode(),
            stream=stream,
            timeout=REQUEST_TIMEOUT_S,
        )
        if answer.status_code != 200:
            raise _Failed(f"{path} answered {answer.status_code}: {answer.text[:200]}")
        return answer

    def health() -> str:
        while True:
            try:
                answer = session.get(url + "/api/v1/health", timeout=5)
                data = answer.json()
                if data.get("status") == "healthy":
                    return "all tiers ready"
                problem = data.get("message", answer.text[:200])
            except (requests.RequestException, ValueError) as exc:
                problem = f"no answer ({type(exc).__name__})"
            if time.monotonic() > end:
                raise _Failed(f"{url}/api/v1/health: {problem}")
            time.sleep(1)

    def models() -> str:
        answer = session.get(url + "/v1/models", headers=auth, timeout=10)
        if answer.status_code != 200:
            raise _Failed(f"/v1/models answered {answer.status_code}")
        listed = {card["id"] for card in answer.json().get("data", [])}
        wanted = {n for s in plan.services for n in (s.name, s.served_model_name)} | {"auto"}
        missing = sorted(wanted - listed)
        if missing:
            raise _Failed(f"/v1/models lacks {', '.join(missing)}")
        return f"{len(listed)} names for {len(plan.services)} tiers and auto"

    def auth_check() -> str:
        bare = session.get(url + "/v1/models", timeout=10).status_code
        wrong = session.get(
            url + "/v1/models", headers={"Authorization": "Bearer wrong-key-0000"}, timeout=10
        ).status_code
        if (bare, wrong) != (401, 401):
            raise _Failed(f"expected 401 without and with a wrong key, got {bare} and {wrong}")
        return "401 without a key and with a wrong one"

    def tiers() -> str:
        served = []
        for service in plan.services:
            alias = service.aliases[0] if service.aliases else service.name
            answer = post(
                "/v1/chat/completions",
                {
                    "model": alias,
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "max_tokens": 16,
                    "chat_template_kwargs": {"enable_thinking": False},
                },
            )
            tier = answer.headers.get("x-qwen-deploy-tier")
            if tier != service.name:
                raise _Failed(f"model {alias!r} was served by {tier!r}, not {service.name}")
            served.append(f"{alias}->{tier}")
        return ", ".join(served)

    def stream() -> str:
        with post(
            "/v1/chat/completions",
            {
                "model": "auto",
                "messages": [{"role": "user", "content": "Count to 3."}],
                "max_tokens": 24,
                "stream": True,
            },
            stream=True,
        ) as answer:
            events = [line[6:] for line in answer.iter_lines() if line.startswith(b"data: ")]
        if not events or events[-1] != b"[DONE]":
            raise _Failed("the stream did not end with [DONE]")
        return f"{len(events)} events, tier {answer.headers.get('x-qwen-deploy-tier')}"

    def seed_chat() -> str:
        data = post("/api/v1/chat", {"message": ACCENTED_PROMPT, "history": []}).json()
        if data.get("success") is not True or not isinstance(data.get("response"), str):
            raise _Failed(f"/api/v1/chat: {data.get('error') or data}")
        return f"answered by {data.get('tier')} (UTF-8 accents accepted)"

    def seed_stream() -> str:
        with post(
            "/api/v1/chat/stream",
            {"message": "Why is the sky blue?", "thinking": True},
            stream=True,
        ) as answer:
            kinds = [
                json.loads(line[6:]).get("type")
                for line in answer.iter_lines()
                if line.startswith(b"data: ")
            ]
        thinking = any(s.reasoning_parser for s in plan.services)
        if not kinds or kinds[0] != "start" or kinds[-1] != "end":
            raise _Failed(f"events {kinds[:3]}…{kinds[-2:]}: not start … end")
        if thinking and "thinking" not in kinds:
            raise _Failed("no thinking event although the tiers have a reasoning parser")
        return f"{len(kinds)} events ({kinds.count('thinking')} thinking)"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("health", health), ("models", models), ("auth", auth_check), ("tiers", tiers),
        ("stream", stream), ("seed-chat", seed_chat), ("seed-stream", seed_stream),
    ]  # fmt: skip
    results: list[CheckResult] = []
    for name, fn in checks:
        if results and not results[0].ok:
            detail = "not run: the gateway is not healthy"
            results.append(CheckResult(SERVICE, name, False, detail, 0.0, skipped=True))
            continue
        started = time.perf_counter()
        try:
            detail, ok = fn(), True
        except _Failed as failed:
            detail, ok = str(failed), False
        except requests.RequestException as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        elapsed = (time.perf_counter() - started) * 1000
        results.append(CheckResult(SERVICE, name, ok, detail, elapsed))
    return ServiceVerification(SERVICE, url, "gateway", tuple(results))
