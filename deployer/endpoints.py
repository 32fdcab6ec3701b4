"""The usage guide of a deployment, generated from its plan: URLs, models, keys, sampling,
ready-to-paste examples and operational advice. Pure: plan and keys in, data or Markdown out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deployer.plan import WILDCARD_BINDS, DeploymentPlan, ServicePlan  # noqa: F401

GUIDE_SCHEMA_VERSION = 1
# Qwen3 model cards, "Best Practices": the non-thinking mode wants different sampling.
NON_THINKING_SAMPLING: dict[str, float | int] = {
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "min_p": 0.0,
}
EXAMPLE_PROMPT = "Explain in two sentences what a KV cache is."
RECOMMENDED_MAX_TOKENS = 32768  # Qwen3 cards: output length for most queries with thinking


def client_host(service: ServicePlan, host: str | None = None) -> str:
    """The host a client on this machine uses (`ServicePlan.client_host`)."""
    return service.client_host(host)


def base_url_for(service: ServicePlan, host: str | None = None) -> str:
    """Server root (no /v1), as `verify` uses it (`ServicePlan.base_url`)."""
    return service.base_url(host)


def mask_key(key: str | None) -> str:
    """`test-key-medium` -> `te…um`: at most a quarter of the key shows, never more than four
    characters, so an 8-character key keeps six of them hidden."""
    if not key:
        return "(not set)"
    shown = min(4, len(key) // 4)
    head, tail = (shown + 1) // 2, shown // 2
    return f"{key[:head]}…{key[len(key) - tail :] if tail else ''}"


def py_str(value: str) -> str:
    """A Python string literal for any text (a served name may hold quotes or newlines)."""
    return json.dumps(value, ensure_ascii=False)


def sh_word(value: str) -> str:
    """One shell word (base URLs carry --host, which is the user's text)."""
    import shlex

    return shlex.quote(value)


def _shared_gpus(plan: DeploymentPlan) -> dict[int, list[str]]:
    users: dict[int, list[str]] = {}
    for service in plan.services:
        for gpu in service.gpus:
            users.setdefault(gpu, []).append(service.name)
    return {gpu: names for gpu, names in sorted(users.items()) if len(names) > 1}


def _examples(
    service: ServicePlan, base_url: str, key_text: str, key_env: str, literal: bool
) -> dict[str, str]:
    model = service.served_model_name
    open_endpoint = service.auth == "none"
    header = f"Authorization: Bearer {key_text}"
    # The OpenAI client insists on some key; an `auth: none` service ignores it.
    py_key = (
        '"EMPTY"' if open_endpoint else repr(key_text) if literal else f'os.environ["{key_env}"]'
    )
    thinks = service.reasoning_parser is not None

    def body(extra: dict[str, Any], thinking: bool | None) -> str:
        data: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": EXAMPLE_PROMPT}],
            **extra,
        }
        if thinking is not None:
            data["chat_template_kwargs"] = {"enable_thinking": thinking}
        # One key a line, values compact: readable and still valid JSON.
        fields = [
            f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in data.items()
        ]
        return ("{\n" + ",\n".join(fields) + "\n  }").replace("'", "'\\''")

    auth_line = "" if open_endpoint else f'  -H "{header}" \\\n'

    def curl(extra: dict[str, Any], thinking: bool | None, *, stream: bool = False) -> str:
        flag = "curl -N" if stream else "curl"
        return (
            f"{flag} {sh_word(base_url + '/chat/completions')} \\\n"
            '  -H "Content-Type: application/json" \\\n'
            f"{auth_line}"
            f"  -d '{body(extra, thinking)}'"
        )

    client = (
        "from openai import OpenAI\n"
        + ("" if literal or open_endpoint else "import os\n")
        + f"\nclient = OpenAI(base_url={py_str(base_url)}, api_key={py_key})\n"
    )

    def python(target: str, max_tokens: int, thinking: bool | None, *, stream: bool = False) -> str:
        lines = [
            f"{target} = client.chat.completions.create(",
            f"    model={py_str(model)},",
            f'    messages=[{{"role": "user", "content": "{EXAMPLE_PROMPT}"}}],',
            f"    max_tokens={max_tokens},",
        ]
        if stream:
            lines.append("    stream=True,")
        if thinking is not None:
            lines.append(
                f'    extra_body={{"chat_template_kwargs": {{"enable_thinking": {thinking}}}}},'
            )
        return client + "\n".join([*lines, ")", ""])

    off = False if thinks else None
    examples = {
        "curl_models": f"curl {sh_word(base_url + '/models')}"
        if open_endpoint
        else f'curl -H "{header}" {sh_word(base_url + "/models")}',
        "curl_chat": curl({"max_tokens": 256}, off),
        "curl_stream": curl({"max_tokens": 256, "stream": True}, off, stream=True),
        "python_openai": python("resp", 256, off) + "print(resp.choices[0].message.content)\n",
        "python_streaming": python("stream", 256, off, stream=True) + "for chunk in stream:\n"
        "    if chunk.choices and chunk.choices[0].delta.content:\n"
        '        print(chunk.choices[0].delta.content, end="", flush=True)\n'
        "print()\n",
    }
    if thinks:
        examples["curl_thinking_on"] = curl({"max_tokens": 4096}, True)
        examples["python_thinking"] = python("resp", 4096, True) + (
            "message = resp.choices[0].message\n"
            "# vLLM returns the thinking apart; thinking tokens count against max_tokens.\n"
            'print("reasoning:", getattr(message, "reasoning", None))\n'
            'print("answer:", message.content)\n'
            'if resp.choices[0].finish_reason == "length" and not message.content:\n'
            '    print("max_tokens ran out while thinking: raise it or disable thinking")\n'
        )
    return examples


def _advice(plan: DeploymentPlan) -> list[str]:
    advice = [
        f"GPU {gpu} is shared by {' and '.join(names)}: they slow each other under load; send "
        "heavy or batch traffic to one of them at a time, or move one to its own GPU"
        for gpu, names in _shared_gpus(plan).items()
    ]
    advice.append(
        "Retry connection errors, 429, 502, 503 and 504 with exponential backoff and jitter "
        "(0.5 s, 1 s, 2 s… capped near 30 s); a 400 or 401 is final: fix the request or the key"
    )
    if any(s.reasoning_parser for s in plan.services):
        advice.append(
            "Thinking is on by default and its tokens count against max_tokens: when "
            'finish_reason is "length" and content is empty, the budget ran out inside the '
            f"thinking block; raise max_tokens (Qwen3 suggests up to {RECOMMENDED_MAX_TOKENS}) or "
            'send "chat_template_kwargs": {"enable_thinking": false}'
        )
    advice.append(
        "Prompt plus max_tokens must fit in the tier's context length; longer requests get a "
        "400 error"
    )
    for service in plan.services:
        if service.max_concurrency < 4:
            advice.append(
                f"{service.name}: the KV cache holds about {service.max_concurrency:g} "
                f"full-context ({service.max_model_len}-token) requests at once; more wait in "
                "the queue, so keep prompts short when many clients share it"
            )
        if service.yarn_factor:
            advice.append(
                f"{service.name}: YaRN (factor {service.yarn_factor:g}) stretches the context; "
                "it can lower quality on short texts"
            )
    if all(s.bind in {"127.0.0.1", "localhost", "::1"} for s in plan.services):
        advice.append("The endpoints listen on loopback only: reachable from this machine")
    return advice


def endpoints_guide(
    plan: DeploymentPlan,
    keys: Mapping[str, str],
    show_keys: bool,
    host: str | None = None,
    env_file: str | None = None,
) -> dict[str, Any]:
    """Per tier: URL, model, context, key (masked unless show_keys), sampling, examples;
    then advice for the whole deployment. env_file (the deployment's .env) is named in the
    guide so that the examples' key variables can be loaded from it."""
    shared = _shared_gpus(plan)
    tiers = []
    for service in plan.services:
        key = keys.get(service.api_key_env) or None
        base_url = base_url_for(service, host) + "/v1"
        literal = show_keys and key is not None
        key_text = key if literal and key else f"${service.api_key_env}"
        neighbours = sorted(
            {n for g in service.gpus for n in shared.get(g, []) if n != service.name}
        )
        sampling: dict[str, Any] = {"server_defaults": service.generation.as_dict()}
        if service.reasoning_parser:
            sampling["non_thinking"] = dict(NON_THINKING_SAMPLING)
        tiers.append(
            {
                "service": service.name,
                "aliases": list(service.aliases),
                "model": service.served_model_name,
                "checkpoint": service.model,
                "base_url": base_url,
                "port": service.port,
                "context_length": service.max_model_len,
                "gpus": list(service.gpus),
                "shares_gpu_with": neighbours,
                "api_key": (key if show_keys else mask_key(key)) if key else None,
                "api_key_masked": not show_keys,
                "api_key_env": service.api_key_env,
                "auth": service.auth,
                "thinking": service.reasoning_parser is not None,
                "reasoning_parser": service.reasoning_parser,
                "sampling": sampling,
                "examples": _examples(service, base_url, key_text, service.api_key_env, literal),
            }
        )
    guide: dict[str, Any] = {
        "schema_version": GUIDE_SCHEMA_VERSION,
        "deployment": plan.deployment,
        "profile": plan.profile,
        "engine": plan.engine,
        "vllm_version": plan.vllm_version,
        "keys_shown": show_keys,
        "env_file": env_file,
    }
    if plan.gateway is not None:  # first: the one URL a client needs
        from deployer.gateway.guide import gateway_entry

        guide["gateway"] = gateway_entry(plan, plan.gateway, keys, show_keys, mask_key, host)
    guide["tiers"] = tiers
    guide["advice"] = _advice(plan)
    return guide


def _sampling_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"`{k}` {v:g}" for k, v in values.items())


def to_markdown(guide: Mapping[str, Any]) -> str:
    """The guide as Markdown, in the shape of a hand-written usage guide."""
    tiers = guide["tiers"]
    out = [
        f"# Endpoints of deployment `{guide['deployment']}`",
        "",
        f"Profile `{guide['profile']}`, engine {guide['engine']} (vLLM {guide['vllm_version']}), "
        "OpenAI-compatible API.",
        "",
    ]
    if guide.get("gateway"):
        from deployer.gateway.guide import gateway_markdown

        out += gateway_markdown(guide["gateway"])
        out += ["## Tiers, directly", ""]
    out += [
        "| Tier | Model (`model` field) | Base URL | Context | API key |",
        "|------|------------------------|----------|---------|---------|",
    ]
    for t in tiers:
        key = (
            "none (`auth: none`)"
            if t.get("auth") == "none"
            else f"`{t['api_key']}`"
            if t["api_key"]
            else "(not set)"
        )
        out.append(
            f"| {t['service']} | `{t['model']}` | `{t['base_url']}` | {t['context_length']} "
            f"| {key} |"
        )
    out.append("")
    if not guide["keys_shown"]:
        names = ", ".join(f"`{t['api_key_env']}`" for t in tiers if t.get("auth") != "none")
        out += [
            f"Keys are masked (`qwen-deploy endpoints --show-keys` prints them); the examples "
            f"read each key from its environment variable ({names}).",
            "",
        ]
        if guide.get("env_file"):
            out += ["```bash", f"set -a; . {guide['env_file']}; set +a", "```", ""]
    out += ["## Sampling", ""]
    for t in tiers:
        line = f"- **{t['service']}**: server defaults (used when a request omits them): "
        line += _sampling_text(t["sampling"]["server_defaults"])
        if "non_thinking" in t["sampling"]:
            line += "; with thinking off Qwen3 recommends " + _sampling_text(
                t["sampling"]["non_thinking"]
            )
        out.append(line)
    out.append("")
    titles = {
        "curl_models": ("List the models", "bash"),
        "curl_chat": ("Chat (curl)", "bash"),
        "curl_stream": ("Streaming (curl)", "bash"),
        "curl_thinking_on": ("Thinking on (curl)", "bash"),
        "python_openai": ("OpenAI Python client", "python"),
        "python_streaming": ("Streaming (Python)", "python"),
        "python_thinking": ("Thinking on, reasoning apart (Python)", "python"),
    }
    for t in tiers:
        aliases = f" (aliases: {', '.join(t['aliases'])})" if t["aliases"] else ""
        out += [f"## {t['service']}{aliases}", ""]
        out.append(
            f"`{t['model']}` at `{t['base_url']}`, context {t['context_length']} tokens, "
            f"GPU {', '.join(map(str, t['gpus']))}"
            + (f", shared with {', '.join(t['shares_gpu_with'])}" if t["shares_gpu_with"] else "")
            + "."
        )
        if t["thinking"]:
            out.append(
                "Thinking is on by default; the examples without it send "
                '`"chat_template_kwargs": {"enable_thinking": false}`.'
            )
        out.append("")
        for name, text in t["examples"].items():
            title, lang = titles.get(name, (name, ""))
            out += [f"### {title}", "", f"```{lang}", text.rstrip("\n"), "```", ""]
    out += ["## Operational advice", ""]
    out += [f"- {line}" for line in guide["advice"]]
    return "\n".join(out) + "\n"
