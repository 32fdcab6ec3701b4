"""Whether a started service is ready: its /v1/models answers with its key and lists its model."""

from __future__ import annotations

import requests

from deployer import openai_wire as wire
from deployer.errors import DeployFailed
from deployer.plan import ServicePlan


def readiness(
    session: requests.Session, service: ServicePlan, api_key: str, timeout_s: float = 3.0
) -> tuple[bool, str]:
    """(ready, detail): ready once GET /v1/models answers 200 with the service's key and lists
    its model; loaded weights and KV cache, not just a live process as /health says."""
    url = service.base_url() + wire.MODELS_PATH
    try:
        # No header for a service without a key (auth: none).
        response = session.get(url, headers=wire.auth_headers(api_key), timeout=timeout_s)
    except requests.RequestException:
        return False, "not answering yet"
    with response:
        if response.status_code in (401, 403):
            raise DeployFailed(
                f"/v1/models refused the deployment's key (HTTP {response.status_code})",
                hint="another container may hold the port, or it runs with an older key",
            )
        if response.status_code != 200:
            return False, f"HTTP {response.status_code}"
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("data", []), list):
            return False, "answer is not a model list"
        served = wire.model_ids(answer)
    if service.served_model_name not in served:
        raise DeployFailed(
            f"port {service.port} serves {', '.join(served) or 'nothing'}, not "
            f"{service.served_model_name}",
            hint="another process answers on that port: stop it or change `port:`",
        )
    return True, "ready"
