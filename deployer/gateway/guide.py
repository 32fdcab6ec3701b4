"""The gateway's part of `endpoints`: URL, key, model names, and curl / OpenAI / seed-004
examples. Pure: plan, gateway section and keys in, data or Markdown lines out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deployer.gateway.spec import GatewaySpec
from deployer.plan import WILDCARD_BINDS, DeploymentPlan

ACCENTED_PROMPT = "Explique-moi brièvement ce qu'est un cache KV."


def gateway_url(spec: GatewaySpec, host: str | None = None) -> str:
    chosen = host or ("127.0.0.1" if spec.bind in WILDCARD_BINDS else spec.bind)
    chosen = f"[{chosen}]" if ":" in chosen and not chosen.startswith("[") else chosen
    return f"http://{chosen}:{spec.port}"


def gateway_entry(
    plan: DeploymentPlan,
    spec: GatewaySpec,
    keys: Mapping[str, str],
    show_keys: bool,
    mask: Any,
    host: str | None = None,
) -> dict[str, Any]:
    """The gateway's entry of the guide; `mask` masks a key (endpoints.mask_key)."""
    url = gateway_url(spec, host)
    client_key = next((k for k in spec.keys if not k.admin), spec.keys[0])
    secret = keys.get(client_key.env_var)
    key_ref = secret if show_keys and secret else f"${client_key.env_var}"
    names = []
    for service in plan.services:
        all_names = (service.name, service.served_model_name, *service.aliases)
        names.append(
            {
                "tier": service.name,
                "names": list(dict.fromkeys(all_names)),
                "context_length": service.max_model_len,
            }
        )
    first = plan.services[0].name
    auth = f'-H "Authorization: Bearer {key_ref}"'
    examples = {
        "curl_models": f"curl -s {url}/v1/models {auth}\n",
        "curl_chat": (
            f"curl -s {url}/v1/chat/completions {auth} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f'  -d \'{{"model": "auto", "messages": [{{"role": "user", "content": '
            f'"Hello"}}], "max_tokens": 256}}\'\n'
        ),
        "curl_utf8_file": (
            "# Non-ASCII text (accents): send a UTF-8 file, never text a shell may re-encode\n"
            "cat > question.json <<'EOF'\n"  # a quoted heredoc: the prompt's ' needs no escape
            f'{{"model": "{first}", "messages": [{{"role": "user", '
            f'"content": "{ACCENTED_PROMPT}"}}]}}\n'
            "EOF\n"
            f"curl -s {url}/v1/chat/completions {auth} \\\n"
            "  -H 'Content-Type: application/json' --data-binary @question.json\n"
        ),
        "curl_seed004_stream": (
            f"curl -sN {url}/api/v1/chat/stream {auth} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            '  -d \'{"message": "Hello", "history": [], "thinking": true}\'\n'
        ),
        "python_openai": (
            "from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{url}/v1", api_key='
            + (f'"{secret}"' if show_keys and secret else f'os.environ["{client_key.env_var}"]')
            + ")\n"
            'answer = client.chat.completions.create(model="auto", '
            'messages=[{"role": "user", "content": "Hello"}], max_tokens=256)\n'
            "print(answer.choices[0].message.content)\n"
        ),
    }
    if not (show_keys and secret):
        examples["python_openai"] = "import os\n" + examples["python_openai"]
    return {
        "service": "gateway",
        "base_url": url + "/v1",
        "url": url,
        "port": spec.port,
        "bind": spec.bind,
        "api_key": (secret if show_keys else mask(secret)) if secret else None,
        "api_key_masked": not show_keys,
        "api_key_env": client_key.env_var,
        "keys": [
            {
                "name": k.name,
                "env_var": k.env_var,
                "tiers": list(k.tiers) if k.tiers is not None else "all",
                "admin": k.admin,
            }
            for k in spec.keys
        ],
        "models": [*names, {"tier": "auto", "names": ["auto"], "context_length": None}],
        "fallback": spec.fallback.value,
        "examples": examples,
    }


def gateway_markdown(entry: Mapping[str, Any]) -> list[str]:
    """The guide's first section: one URL, one key, every tier."""
    key = f"`{entry['api_key']}`" if entry["api_key"] else f"`${entry['api_key_env']}`"
    out = [
        "## Gateway (one URL for every tier)",
        "",
        f"`{entry['base_url']}` with key {key} ({entry['api_key_env']} in .env). `model` is any "
        "of the names below, or `auto` (the smallest tier whose context holds the request). "
        "Every answer names its tier in `x-qwen-deploy-tier`. Seed 004's chat API is at "
        f"`{entry['url']}/api/v1/chat` and `/api/v1/chat/stream` (events start, thinking, chunk, "
        "end, error).",
        "",
        "| Tier | `model` names | Context |",
        "|------|---------------|---------|",
    ]
    for model in entry["models"]:
        names = ", ".join(f"`{n}`" for n in model["names"])
        out.append(f"| {model['tier']} | {names} | {model['context_length'] or 'per tier'} |")
    out += [
        "",
        '"There was an error parsing the body" (from a tier) or the gateway\'s "not UTF-8 at '
        'offset N" means the shell re-encoded non-ASCII text: send a UTF-8 file with '
        "`curl --data-binary @file`.",
        "",
    ]
    titles = {
        "curl_models": "List the models",
        "curl_chat": "Chat, tier chosen by the gateway",
        "curl_utf8_file": "Accented text from a UTF-8 file",
        "curl_seed004_stream": "Seed 004 stream with live thinking",
        "python_openai": "OpenAI Python client",
    }
    for name, text in entry["examples"].items():
        lang = "python" if name.startswith("python") else "bash"
        out += [f"### {titles.get(name, name)}", "", f"```{lang}", text.rstrip("\n"), "```", ""]
    return out
