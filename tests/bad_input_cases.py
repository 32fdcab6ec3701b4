"""The bad-input table: each way a user can hand qwen-deploy something wrong, and what it must
answer. Every case runs the real entry point and must end with exactly one `error:` line on
stderr containing its fragment, the exit code of its concern (deployer.errors.ExitCode), no
traceback, nothing on stdout, and nothing changed: not the deployment directory, not the
containers.

tests/unit/test_bad_input.py runs the cases that need no Docker engine against a rendered
deployment, with DOCKER_HOST pointing at a socket that does not exist (a case that slipped past
its check could not touch an engine either). tests/integration/test_bad_input_docker.py runs
every case against a healthy running deployment on the real engine and checks that its
containers are untouched. docs/troubleshooting-table.md, pasted into the README's
Troubleshooting section, is this table in words: `python -m tests.bad_input_cases` prints it.

Args and env values may name {profile} (the case's profile file), {gpus} (the 3-GPU inventory of
the deployment), {tmp}, {fixtures} and {other} (a second deployment name, for cases that act
beside the running one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import ExitCode
from tests.helpers.deployments import tri_tier_profile

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
DOC_TABLE = ROOT / "docs" / "troubleshooting-table.md"

Cleanup = Callable[[], None]


@dataclass
class Workspace:
    """Where a case runs: a deployment (rendered, or running on the engine) and scratch space."""

    tmp: Path
    home: Path
    deployment: str
    first_gpu: int
    ports: dict[str, int]
    gpus_file: Path
    other: str
    values: dict[str, str] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.home / self.deployment

    @property
    def profile(self) -> Path:
        return self.tmp / "case-profile.yaml"

    def placeholders(self) -> dict[str, str]:
        return {
            "profile": str(self.profile),
            "gpus": str(self.gpus_file),
            "tmp": str(self.tmp),
            "fixtures": str(FIXTURES),
            "other": self.other,
            "dir": str(self.dir),
            **self.values,
        }

    def format(self, text: str) -> str:
        return text.format_map(self.placeholders())

    def good_profile(self, **services: dict[str, Any]) -> dict[str, Any]:
        """The profile the deployment runs (tri-tier on its ports and GPUs), with overrides."""
        return tri_tier_profile(self.ports, self.first_gpu, **services)

    def write_profile(self, data: Any) -> None:
        self.profile.write_text(yaml.safe_dump(data, sort_keys=False))


Setup = Callable[[Workspace], Cleanup | None]


@dataclass(frozen=True)
class Case:
    id: str
    situation: str  # what the user did, for the README
    args: tuple[str, ...]  # after `--home HOME --deployment NAME`
    code: ExitCode
    fragment: str  # the error line contains this
    fix: str  # what to do, for the README
    setup: Setup | None = None
    env: tuple[tuple[str, str | None], ...] = ()  # None removes the variable
    engine: bool = False  # needs the Docker engine (runs only in the integration test)
    # "cli": CliRunner; "no-dac": the entry point without CAP_DAC_OVERRIDE; "gateway": the
    # gateway's own entry point as its container runs it (`python -m deployer.gateway ARGS`).
    runner: str = "cli"
    progress: bool = False  # progress lines ("  service  stage") may come before the error


# --- setups ---------------------------------------------------------------------------------------


def profile(**services: dict[str, Any]) -> Setup:
    """The deployment's own profile, with these per-service overrides."""

    def setup(ws: Workspace) -> None:
        ws.write_profile(ws.good_profile(**services))

    return setup


def together(*setups: Setup) -> Setup:
    """Run several setups; their cleanups run in reverse order."""

    def setup(ws: Workspace) -> Cleanup:
        cleanups = [c for c in (s(ws) for s in setups) if c is not None]

        def cleanup() -> None:
            for undo in reversed(cleanups):
                undo()

        return cleanup

    return setup


def profile_text(text: str) -> Setup:
    def setup(ws: Workspace) -> None:
        ws.profile.write_text(text)

    return setup


def one_service(model: str, **extra: Any) -> Setup:
    """A one-service profile on GPU 0 (for the fixture boxes, numbered from 0)."""

    def setup(ws: Workspace) -> None:
        service = {"model": model, "gpus": [0], "port": 18080, "api_key": "test-key-single"}
        ws.write_profile({"name": "single", "services": {"single": {**service, **extra}}})

    return setup


def gpus_file_with(name: str, fields: dict[str, Any]) -> Setup:
    """A one-GPU `--gpus-file` in tmp whose GPU has these fields (the rest are an RTX 4090's)."""
    gpu = {"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
           "compute_capability": "8.9", **fields}  # fmt: skip
    return file_in_tmp(name, json.dumps({"gpus": [gpu]}))


def file_in_tmp(name: str, text: str) -> Setup:
    def setup(ws: Workspace) -> None:
        (ws.tmp / name).write_text(text)

    return setup


def hand_edit(name: str, edit: Callable[[str], str]) -> Setup:
    """Edit a file of the deployment directory in place, the way a person with an editor would
    (not atomically); the good profile is written too, for cases that run `up`/`render`."""

    def setup(ws: Workspace) -> None:
        path = ws.dir / name
        path.write_text(edit(path.read_text()))
        ws.write_profile(ws.good_profile())

    return setup


def hold_lock(ws: Workspace) -> Cleanup:
    """Hold the deployment's lock as a running `up` would (flock on another open file)."""
    handle = open(ws.dir / ".lock", "a+")  # noqa: SIM115 - closed by the cleanup
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.seek(0)
    handle.truncate()
    handle.write("pid 4242")
    handle.flush()
    ws.write_profile(ws.good_profile())

    def cleanup() -> None:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    return cleanup


def foreign_project(ws: Workspace) -> Cleanup:
    """A container of another compose project named like {other}, labelled the way `docker
    compose` labels it (no io.qwen-deploy.* label); the good profile is written too."""
    import docker

    from deployer.vllm_pin import STANDIN_IMAGE

    client = docker.from_env()
    container = client.containers.run(
        STANDIN_IMAGE,
        ["600"],
        entrypoint=["sleep"],
        name=f"{ws.other}-db-1",
        labels={
            "com.docker.compose.project": ws.other,
            "com.docker.compose.service": "db",
            "com.docker.compose.oneoff": "False",
        },
        detach=True,
    )
    ws.write_profile(ws.good_profile())

    def cleanup() -> None:
        container.remove(force=True)
        client.close()

    return cleanup


def listen_on_port_of(service: str) -> Setup:
    """Another process listens on a port; the profile moves `service` onto it."""

    def setup(ws: Workspace) -> Cleanup:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        ws.write_profile(ws.good_profile(**{service: {"port": port}}))
        return sock.close

    return setup


def unix_socket_mode_000(ws: Workspace) -> Cleanup:
    """A listening socket nobody may connect to, as /var/run/docker.sock is for a user outside
    the docker group."""
    path = ws.tmp / "docker-000.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    path.chmod(0)
    ws.write_profile(ws.good_profile())

    def cleanup() -> None:
        sock.close()
        path.unlink(missing_ok=True)

    return cleanup


def plan_json(edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Setup:
    return hand_edit("plan.json", lambda text: json.dumps(edit(json.loads(text)), indent=2))


def _future(plan: dict[str, Any]) -> dict[str, Any]:
    return {**plan, "schema_version": 99}


def _bad_key_line(text: str) -> str:
    return (
        "\n".join(
            "QWEN_DEPLOY_API_KEY_MINI=pasted key with spaces"
            if line.startswith("QWEN_DEPLOY_API_KEY_MINI=")
            else line
            for line in text.splitlines()
        )
        + "\n"
    )


# --- setups of the hardening cases (issue 14) ----------------------------------------------------

NOBODY = 65534  # the unprivileged `nobody` user: another user's files, without creating a user
BILLION_LAUGHS = (
    "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
        for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefghi", strict=False)
    )
    + "services: {mini: {model: *h, port: 5001}}\n"
)


def profile_bytes(data: bytes) -> Setup:
    def setup(ws: Workspace) -> None:
        ws.profile.write_bytes(data)

    return setup


def with_models(families: dict[str, Any]) -> Setup:
    """The deployment's profile with a `models:` section, and mini on its checkpoint."""

    def setup(ws: Workspace) -> None:
        data = ws.good_profile(mini={"model": "evil/tiny"})
        data["models"] = {"families": families}
        ws.write_profile(data)

    return setup


def _tiny_family(**fields: Any) -> dict[str, Any]:
    family = {"layers": 2, "attention_heads": 4, "kv_heads": 2, "head_dim": 64,
              "hidden_size": 256, "intermediate_size": 512, "params_b": 0.01,
              "checkpoints": [{"id": "evil/tiny", "quantization": "bf16", "weights_gb": 0.02}]}  # fmt: skip
    return {"Evil": {**family, **fields}}


def deployment_file(name: str, data: bytes | None) -> Setup:
    """Replace (bytes) or delete (None) a file of the deployment directory; the good profile
    is written too. restored() puts the original back."""

    def setup(ws: Workspace) -> None:
        path = ws.dir / name
        path.unlink()
        if data is not None:
            path.write_bytes(data)
        ws.write_profile(ws.good_profile())

    return setup


def owned_by_nobody(name: str | None) -> Setup:
    """The deployment directory (None) or one of its files owned by another user."""

    def setup(ws: Workspace) -> Cleanup:
        path = ws.dir / name if name else ws.dir
        info = path.stat()
        os.chown(path, NOBODY, NOBODY)
        ws.write_profile(ws.good_profile())
        return lambda: os.chown(path, info.st_uid, info.st_gid)

    return setup


def writable_by_others(ws: Workspace) -> Cleanup:
    """The deployment directory as an older qwen-deploy left it under `umask 000`."""
    mode = ws.dir.stat().st_mode & 0o7777
    ws.dir.chmod(0o777)
    ws.write_profile(ws.good_profile())
    return lambda: ws.dir.chmod(mode)


def lock_is_a_symlink(ws: Workspace) -> Cleanup:
    """`.lock` replaced by a link to a file outside (what a planted link looks like)."""
    victim = ws.tmp / "victim.txt"
    victim.write_text("must not be truncated\n")
    lock = ws.dir / ".lock"
    saved = lock.read_bytes()
    lock.unlink()
    lock.symlink_to(victim)
    ws.write_profile(ws.good_profile())

    def cleanup() -> None:
        lock.unlink()
        lock.write_bytes(saved)
        assert victim.read_text() == "must not be truncated\n"

    return cleanup


def file_where_the_directory_goes(ws: Workspace) -> Cleanup:
    """A plain file where a deployment directory would go (in a home of its own)."""
    home = ws.tmp / "home-with-a-file"
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "x").write_text("not a directory\n")
    ws.write_profile(ws.good_profile())
    return lambda: (home / "x").unlink()


def deployment_file_mode(name: str, mode: int) -> Setup:
    """chmod a file of the deployment directory (put back afterwards)."""

    def setup(ws: Workspace) -> Cleanup:
        path = ws.dir / name
        before = path.stat().st_mode & 0o7777
        path.chmod(mode)
        return lambda: path.chmod(before)

    return setup


def deployment_file_is_a_symlink(name: str) -> Setup:
    """A file of the deployment directory replaced by a link to a copy of it outside."""

    def setup(ws: Workspace) -> Cleanup:
        path = ws.dir / name
        saved = path.read_bytes()
        copy = ws.tmp / f"linked-{name.lstrip('.')}"
        copy.write_bytes(saved)
        path.unlink()
        path.symlink_to(copy)

        def cleanup() -> None:
            path.unlink()
            path.write_bytes(saved)
            path.chmod(0o600)

        return cleanup

    return setup


def bytes_in_tmp(name: str, data: bytes) -> Setup:
    def setup(ws: Workspace) -> None:
        (ws.tmp / name).write_bytes(data)

    return setup


def fifo_in_tmp(name: str) -> Setup:
    def setup(ws: Workspace) -> Cleanup:
        path = ws.tmp / name
        os.mkfifo(path)
        return lambda: path.unlink()

    return setup


def plan_port_as_text(plan: dict[str, Any]) -> dict[str, Any]:
    services = [dict(s) for s in plan["services"]]
    services[0]["port"] = "not a port"
    return {**plan, "services": services}


# Start a command with the deployment's own profile and inventory, on the stand-in engine.
UP = ("up", "-p", "{profile}", "--gpus-file", "{gpus}", "--engine", "stand-in", "--no-verify")
RENDER = ("render", "-p", "{profile}", "--gpus-file", "{gpus}", "--engine", "stand-in")
# The gateway in the foreground, on an address no host has: should a check ever let a bad file
# through, uvicorn fails to listen (exit 1) instead of serving until the test times out.
GATEWAY_SERVE = ("gateway", "serve", "--bind", "192.0.2.1", "--port", "9")
GATEWAY_MODULE = ("--plan", "{dir}/plan.json", "--upstream", "host", "--host", "192.0.2.1",
                  "--port", "9")  # fmt: skip
GATEWAY_ENV = (("QWEN_DEPLOY_ENV_FILE", "{dir}/.env"),)
BENCH_DATASET = ("bench", "mini", "-c", "1", "--max-tokens", "4", "--requests-per-point", "1",
                 "--dataset")  # fmt: skip
GOOD = profile()

CASES: tuple[Case, ...] = (
    # --- the command line -----------------------------------------------------------------------
    Case("usage-missing-profile", "`up` without `--profile`", ("up",), ExitCode.USAGE,
         "Missing option '--profile'", "name a profile, a YAML file or `auto`",
         env=(("QWEN_DEPLOY_PROFILE", None),)),
    Case("usage-bad-engine", "an engine that does not exist", (*UP[:5], "--engine", "sglang"),
         ExitCode.USAGE, "'sglang' is not one of 'vllm', 'stand-in'", "use vllm or stand-in",
         setup=GOOD),
    Case("hf-token-file-missing", "`--hf-token-file` names a file that is not there",
         (*UP, "--hf-token-file", "{tmp}/no-such-token"), ExitCode.USAGE,
         "cannot read", "check the path", setup=GOOD),
    Case("hf-token-file-malformed", "`--hf-token-file` holds more than one token",
         (*UP, "--hf-token-file", "{tmp}/token"), ExitCode.USAGE,
         "must hold one token on one line", "put the token alone on the first line",
         setup=together(GOOD, file_in_tmp("token", "hf_abc\nhf_def\n"))),
    # Edge numbers of the runtime commands (D17): NaN passes a plain FloatRange, huge ages
    # overflow datetime.
    Case("up-timeout-nan", "`up --timeout nan`", (*UP, "--timeout", "nan"), ExitCode.USAGE,
         "'nan' is not a finite number", "give a number of seconds", setup=GOOD),
    Case("status-watch-nan", "`status --watch nan`", ("status", "--watch", "nan"),
         ExitCode.USAGE, "'nan' is not a finite number", "give a number of seconds"),
    Case("verify-deadline-nan", "`verify --deadline nan`", ("verify", "micro", "--deadline", "nan"),
         ExitCode.USAGE, "'nan' is not a finite number", "give a number of seconds"),
    Case("logs-since-huge", "`logs --since 99999999999d`, before any log line could be",
         ("logs", "micro", "--since", "99999999999d"), ExitCode.USAGE,
         "'99999999999d' is out of range", "use 10m, 2h, 1d, a Unix time or a date"),
    Case("bench-absurd-concurrency", "`bench --concurrency` far above what one client runs",
         ("bench", "mini", "-c", "100000000", "-p", "16", "--max-tokens", "4",
          "--requests-per-point", "1"), ExitCode.USAGE,
         "is more than 1024 concurrent requests",
         "use at most 1024; beyond that, `vllm bench serve` or GuideLLM (README: Benchmarks)"),
    # --- the profile ----------------------------------------------------------------------------
    Case("profile-not-yaml", "the profile is not valid YAML", UP, ExitCode.PROFILE,
         "not valid YAML (line", "fix the line the message names",
         setup=profile_text("services:\n  mini: {model: Qwen/Qwen3-8B-AWQ, port: [5001\n")),
    Case("profile-unknown-key", "a misspelt key in the profile", UP, ExitCode.PROFILE,
         "unknown key 'contxt' (did you mean 'context'?)", "use the key it suggests",
         setup=profile(mini={"contxt": 32768})),
    Case("profile-unknown-name", "a profile name that does not exist",
         ("plan", "-p", "tri-teir", "--gpus-file", "{gpus}"), ExitCode.PROFILE,
         "unknown profile 'tri-teir'", "`qwen-deploy profiles` lists them; it suggests the nearest"),
    Case("profile-file-missing", "a profile path that does not exist",
         ("up", "-p", "{tmp}/nope.yaml", "--gpus-file", "{gpus}"), ExitCode.PROFILE,
         "cannot read profile", "check the path"),
    Case("model-unknown", "a model that is not in the catalog", UP, ExitCode.PROFILE,
         "unknown model 'Qwen/Qwen3-9B-AWQ'",
         "`qwen-deploy models` lists the catalog; add others in a `models:` section",
         setup=profile(mini={"model": "Qwen/Qwen3-9B-AWQ"})),
    Case("port-twice", "two services on one port", UP, ExitCode.PROFILE,
         "is already used by services.", "give every service its own port",
         setup=lambda ws: profile(micro={"port": ws.ports["mini"]})(ws)),
    Case("port-out-of-range", "a port above 65535", UP, ExitCode.PROFILE,
         "expected an integer from 1 to 65535", "use a port from 1024 to 65535",
         setup=profile(micro={"port": 70000})),
    Case("context-too-long", "a context longer than the model supports", UP, ExitCode.PROFILE,
         "tokens is more than Qwen/Qwen3-8B-AWQ supports", "use the context the message names",
         setup=profile(mini={"context": 200000})),
    Case("api-key-breaks-env", "an API key with characters that would break .env or compose",
         UP, ExitCode.PROFILE, "keys are 8-256 characters",
         "use letters, digits and ._~+/=- (or omit api_key to generate one)",
         setup=profile(mini={"api_key": "k3y with spaces\nINJECTED=1 $HOME"})),
    Case("api-key-env-breaks-env", "an `api_key_env` variable holding such characters", RENDER,
         ExitCode.PROFILE, "has characters that would break the .env file",
         "export a key of letters, digits and ._~+/=-",
         setup=profile(mini={"api_key": None, "api_key_env": "QD_TEST_MINI_KEY"}),
         env=(("QD_TEST_MINI_KEY", 'abc"def\nINJECTED=1'),)),
    # An existing deployment keeps the key its .env holds; a new one has none to fall back on.
    Case("api-key-env-unset", "`api_key_env` names a variable that is not set (new deployment)",
         ("--deployment", "{other}", *RENDER), ExitCode.PROFILE, "$QD_TEST_UNSET_KEY is not set",
         "export it, or remove api_key_env to generate a key",
         setup=profile(mini={"api_key": None, "api_key_env": "QD_TEST_UNSET_KEY"}),
         env=(("QD_TEST_UNSET_KEY", None),)),
    Case("auth-none-unconfirmed", "`auth: none` without `--allow-unauthenticated`", RENDER,
         ExitCode.PROFILE, "would serve 127.0.0.1:",
         "pass --allow-unauthenticated if an open endpoint is really meant",
         setup=profile(micro={"api_key": None, "auth": "none"})),
    # --- the GPUs -------------------------------------------------------------------------------
    Case("no-nvidia-driver", "no NVIDIA driver (and no `--gpus-file`)",
         ("up", "-p", "{profile}", "--engine", "stand-in"), ExitCode.INVENTORY,
         "cannot talk to the NVIDIA driver", "install/load the driver, or plan with --gpus-file",
         setup=GOOD, env=(("QWEN_DEPLOY_GPUS_FILE", None),)),
    Case("gpus-file-not-json", "a `--gpus-file` that is not JSON",
         ("plan", "-p", "{profile}", "--gpus-file", "{tmp}/gpus.txt"), ExitCode.INVENTORY,
         "not valid JSON", "write it with `qwen-deploy gpus --json`",
         setup=together(GOOD, file_in_tmp("gpus.txt", "GPU 0: RTX 4090\n"))),
    Case("gpus-file-missing-fields", "a `--gpus-file` that lacks fields",
         ("plan", "-p", "{profile}", "--gpus-file", "{tmp}/gpus-short.json"),
         ExitCode.INVENTORY, "missing name, memory_total_mib, compute_capability",
         "add the fields the message names",
         setup=together(GOOD, file_in_tmp("gpus-short.json", '{"gpus": [{"index": 0}]}'))),
    Case("gpus-file-unreadable", "a `--gpus-file` that does not exist",
         ("plan", "-p", "{profile}", "--gpus-file", "{tmp}/none.json"), ExitCode.INVENTORY,
         "cannot read GPU file", "check the path", setup=GOOD),
    # --- hardening: the GPU inventory (issue 14: D17, D19, D22, D31, D34, D35) -------------------
    *(Case(f"gpus-file-{name}", situation, ("plan", "-p", "{profile}", "--gpus-file",
                                            f"{{tmp}}/gpus-{name}.json"),
           ExitCode.INVENTORY, fragment, fix,
           setup=together(GOOD, gpus_file_with(f"gpus-{name}.json", fields)))
      for name, situation, fields, fragment, fix in (
        ("huge-memory", "a `--gpus-file` memory size no GPU has (`1e308`)",
         {"memory_total_mib": 1e308}, "bad value for memory_total_mib: expected a whole number",
         "write it with `qwen-deploy gpus --json`"),
        ("zero-memory", "a `--gpus-file` GPU with 0 MiB of memory", {"memory_total_mib": 0},
         "bad value for memory_total_mib: expected a whole number of MiB from 1",
         "write it with `qwen-deploy gpus --json`"),
        ("mig-as-text", 'a `--gpus-file` with `"mig_enabled": "false"` (text, not a boolean)',
         {"mig_enabled": "false"}, "bad value for mig_enabled: expected true or false",
         "write true or false without quotes"),
        ("negative-index", "a `--gpus-file` GPU index below 0 (or above 1023)", {"index": -1},
         "bad value for index: expected a GPU index from 0 to 1023",
         "number the GPUs as NVML does: 0, 1, 2…"),
        ("index-true", 'a `--gpus-file` with `"index": true`', {"index": True},
         "bad value for index: expected a GPU index from 0 to 1023, got true",
         "write the number"),
        ("bad-processes", 'a `--gpus-file` with `"processes": "python"`', {"processes": "python"},
         "bad value for processes: expected a list of objects",
         'list them as `[{"pid": 4242, "name": "python", "used_memory_mib": 12288}]`'),
        ("capability-three-parts", "a `--gpus-file` compute capability such as `8.9.1`",
         {"compute_capability": "8.9.1"}, "is not MAJOR.MINOR",
         "write it as NVML reports it, e.g. `8.9`"),
        ("negative-capability", "a `--gpus-file` compute capability of `-1.0`",
         {"compute_capability": "-1.0"}, "is not MAJOR.MINOR",
         "write it as NVML reports it, e.g. `8.9`"),
        ("name-control-chars", "a `--gpus-file` GPU name with a newline or a terminal escape",
         {"name": "RTX\n4090\u001b[31mRED"}, "bad value for name:",
         "write it with `qwen-deploy gpus --json`; names are printed on terminals"),
    )),
    # --- the plan -------------------------------------------------------------------------------
    Case("gpu-index-out-of-range", "a GPU index the box does not have", UP, ExitCode.PLAN,
         "does not exist; this box has GPUs", "use an index that `qwen-deploy gpus` lists",
         setup=lambda ws: profile(mini={"gpus": [ws.first_gpu + 7]})(ws)),
    Case("profile-needs-more-gpus", "a profile for more GPUs than the box has",
         ("plan", "-p", "eight-gpu", "--gpus-file", "{gpus}"), ExitCode.PLAN,
         "needs 8 GPU(s)", "choose a smaller profile, or `--profile auto`"),
    Case("gpu-count-too-high", "`gpus: auto` asking for more GPUs than exist", UP,
         ExitCode.PLAN, "needs 4 GPUs; this box has 3", "lower gpu_count",
         setup=profile(medium={"gpus": "auto", "gpu_count": 4})),
    Case("awq-on-v100", "an AWQ checkpoint on a V100 (compute capability 7.0)",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/1x-v100.json"),
         ExitCode.PLAN, "is AWQ, which vLLM 0.33.0 runs only on compute capability 7.5",
         "use the BF16 checkpoint it suggests, or a newer GPU",
         setup=one_service("Qwen/Qwen3-8B-AWQ")),
    Case("fp8-on-v100", "an FP8 checkpoint on a V100 (compute capability 7.0)",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/1x-v100.json"),
         ExitCode.PLAN, "is FP8, which vLLM 0.33.0 runs only on compute capability 7.5",
         "use the BF16 checkpoint it suggests, or a newer GPU",
         setup=one_service("Qwen/Qwen3-1.7B-FP8")),
    Case("memory-does-not-fit", "a model too big for its GPU", UP, ExitCode.PLAN,
         "does not fit on GPU", "apply one of the fixes it lists (context, fp8 KV, smaller checkpoint)",
         setup=profile(mini={"model": "Qwen/Qwen3-32B"})),
    Case("utilization-too-small", "a fixed gpu_memory_utilization too small for one request",
         UP, ExitCode.PLAN, "vLLM would refuse to start",
         "raise it, set it to auto, or shorten the context",
         setup=profile(mini={"gpu_memory_utilization": 0.3})),
    Case("utilization-above-free", "a fixed gpu_memory_utilization above the GPU's free memory",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/1x-rtx4090-half-used.json"),
         ExitCode.PLAN, "less than the fixed gpu_memory_utilization asks",
         "lower it to the fraction the fix names, or set it to auto",
         setup=one_service("Qwen/Qwen3-8B-AWQ", gpu_memory_utilization=0.6)),
    Case("tp-kv-heads", "a tensor parallel size the model's KV heads do not split into (D8)",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/8x-h100.json"),
         ExitCode.PLAN, "neither divides nor is a multiple of Qwen3-14B's 8 KV heads",
         "use a GPU count the hint names (1, 2, 4 or 8)",
         setup=one_service("Qwen/Qwen3-14B", gpus=[0, 1, 2, 3, 4])),
    Case("tp-fp8-block", "FP8 weights split into partitions that are not 128-blocks (D8)",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/8x-h100.json"),
         ExitCode.PLAN, "not a multiple of the FP8 weight block of 128",
         "use a GPU count the hint names (here 1 or 2)",
         setup=one_service("Qwen/Qwen3-30B-A3B-FP8", gpus=[0, 1, 2, 3])),
    Case("tp-awq-group", "AWQ weights split into partitions that are not whole groups (D8)",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/8x-h100.json"),
         ExitCode.PLAN, "not a multiple of the AWQ group of 128",
         "use a GPU count the hint names (here 1, 2 or 4)",
         setup=one_service("Qwen/Qwen3-4B-AWQ", gpus=list(range(8)))),
    Case("auto-many-services", "50 `gpus: auto` services on a 3-GPU box (D23)",
         ("plan", "-p", "{profile}", "--gpus-file", "{fixtures}/gpus/3x-rtx4090.json"),
         ExitCode.PLAN, "more services", "fewer services per GPU, or a bigger box",
         setup=lambda ws: ws.write_profile({"name": "many", "services": {
             f"s{i}": {"model": "Qwen/Qwen3-0.6B", "gpus": "auto", "port": 18100 + i,
                       "context": 8192} for i in range(50)}})),
    # --- the Docker engine ----------------------------------------------------------------------
    Case("docker-unreachable", "the Docker engine is not running", UP, ExitCode.DOCKER,
         "cannot reach the Docker engine", "start dockerd (`make docker`), or fix DOCKER_HOST",
         setup=GOOD, env=(("DOCKER_HOST", "unix://{tmp}/no-dockerd-here.sock"),)),
    Case("docker-permission-denied", "the Docker socket refuses this user",
         ("status",), ExitCode.DOCKER, "permission denied on the Docker socket",
         "add the user to the docker group (or run as root)",
         setup=unix_socket_mode_000, env=(("DOCKER_HOST", "unix://{tmp}/docker-000.sock"),),
         runner="no-dac"),
    Case("port-in-use", "a port another process on the host listens on", UP, ExitCode.DEPLOY,
         "of service micro is already in use on 127.0.0.1 by another process",
         "stop that process or change `port:`; nothing was started",
         setup=listen_on_port_of("micro"), engine=True),
    Case("port-of-another-deployment", "a port another deployment's container publishes",
         ("--deployment", "{other}", *UP), ExitCode.DEPLOY, "is published by container",
         "change `port:`, or `down` the other deployment", setup=GOOD, engine=True),
    Case("name-taken", "a deployment name that another compose project's containers carry (D1)",
         ("--deployment", "{other}", *UP), ExitCode.NAME_TAKEN,
         "is taken by another compose project: container",
         "choose another `--deployment` name, or pass `--share-name` to deploy beside them",
         setup=foreign_project, engine=True),
    Case("image-not-built", "the stand-in image is missing", (*UP, "--image",
         "qwen-deploy/vllm-standin:not-built"), ExitCode.DEPLOY,
         "the stand-in image qwen-deploy/vllm-standin:not-built is not built",
         "`make images`", setup=GOOD, engine=True),
    Case("image-cannot-be-pulled", "the vLLM image is missing and cannot be pulled",
         ("up", "-p", "{profile}", "--gpus-file", "{gpus}", "--engine", "vllm", "--image",
          "registry.invalid/vllm-openai:v0.33.0"), ExitCode.DEPLOY,
         "cannot pull registry.invalid/vllm-openai:v0.33.0",
         "check network and registry access, or `docker pull` it", setup=GOOD, engine=True,
         progress=True),
    # --- the deployment directory and its services ----------------------------------------------
    Case("bad-deployment-name", "a deployment name with spaces or capitals",
         ("--deployment", "Bad Name", *RENDER), ExitCode.STATE, "bad deployment name",
         "use lower-case letters, digits, '-' and '_'", setup=GOOD),
    Case("no-such-deployment", "`restart` of a deployment that was never created",
         ("--deployment", "never-created", "restart"), ExitCode.STATE,
         "no deployment 'never-created'", "`qwen-deploy up` first"),
    Case("logs-unknown-service", "`logs` of a service that does not exist", ("logs", "nano"),
         ExitCode.PROFILE, "no service 'nano'", "use a name or alias that `status` shows"),
    Case("restart-unknown-service", "`restart` of a service that does not exist",
         ("restart", "nano"), ExitCode.PROFILE, "no service 'nano'",
         "use a name or alias that `status` shows"),
    Case("verify-unknown-service", "`verify` of a service that does not exist",
         ("verify", "nano"), ExitCode.PROFILE, "no service 'nano'",
         "use a name or alias that `status` shows"),
    Case("plan-json-hand-edited", "plan.json edited by hand into something that is not JSON",
         ("status",), ExitCode.STATE, "is not a valid plan",
         "`qwen-deploy up` (or `render`) writes it again; `down` still works",
         setup=hand_edit("plan.json", lambda text: text[: len(text) // 2])),
    Case("plan-json-other-version", "plan.json from another qwen-deploy version",
         ("restart", "mini"), ExitCode.STATE, "schema_version 99 is not 1",
         "`qwen-deploy up` writes it again", setup=plan_json(_future)),
    Case("env-file-hand-edited", ".env edited by hand into something compose cannot read",
         RENDER, ExitCode.STATE, ".env:6: expected NAME=value",
         "fix the line, or delete .env and render again (new keys)",
         setup=hand_edit(".env", lambda text: text + "this line is not an assignment\n")),
    Case("env-key-hand-edited", "a key in .env edited into one with spaces or quotes", UP,
         ExitCode.STATE, "QWEN_DEPLOY_API_KEY_MINI is not a usable API key",
         "fix the line, or delete it and `render` writes a new key",
         setup=hand_edit(".env", _bad_key_line), engine=True),
    # --- hardening (issue 14): strictness -------------------------------------------------------
    Case("extra-args-secret", "`extra_args` carry an API key (`--api-key K`)", UP,
         ExitCode.PROFILE, "--api-key would write a secret into compose.yaml and plan.json",
         "use api_key or api_key_env (the key then lives only in .env)",
         setup=profile(mini={"extra_args": ["--api-key", "injected-secret-key-9999"]})),
    Case("extra-args-planned-flag", "`extra_args` override a flag the plan sets (`--max-model-len`)",
         UP, ExitCode.PROFILE, "--max-model-len is set by the plan; use the profile's context",
         "set the profile key the message names",
         setup=profile(mini={"extra_args": ["--max-model-len", "4096"]})),
    Case("extra-args-unknown", "`extra_args` hold an option vLLM 0.33 does not have", UP,
         ExitCode.PROFILE, "--rope-scaling is not an option of `vllm serve` 0.33",
         "check `vllm serve --help` of 0.33 (the option may have been renamed or removed)",
         setup=profile(mini={"extra_args": ["--rope-scaling", "{}"]})),
    Case("reasoning-parser-unknown", "a `reasoning_parser` vLLM does not have", UP,
         ExitCode.PROFILE, "is not a reasoning parser of vLLM 0.33",
         "use qwen3, or none to turn it off",
         setup=profile(mini={"reasoning_parser": "qwen3; rm -rf /"})),
    Case("reasoning-parser-false", "`reasoning_parser: false` (a YAML boolean)", UP,
         ExitCode.PROFILE, "False is not a reasoning parser", "write `none` (or null) to turn it off",
         setup=profile(mini={"reasoning_parser": False})),
    Case("boolean-as-string", "a boolean written as a string (`enforce_eager: \"false\"`)", UP,
         ExitCode.PROFILE, "enforce_eager: expected true or false, got 'false'",
         "write true or false without quotes", setup=profile(mini={"enforce_eager": "false"})),
    Case("served-name-not-text", "`served_model_name: 42` (YAML reads a number)", UP,
         ExitCode.PROFILE, "served_model_name: expected a name", "quote it",
         setup=profile(mini={"served_model_name": 42})),
    Case("environment-not-text", "an environment value that is not a string (`FLAG: true`)", UP,
         ExitCode.PROFILE, "environment.FLAG: expected a string, got True",
         "quote it so that the container gets exactly that text",
         setup=profile(mini={"environment": {"FLAG": True}})),
    Case("environment-too-large", "a 200 KB environment value", UP, ExitCode.PROFILE,
         "environment.BIG: 200000 characters, at most 16384",
         "put large settings in a file, not the environment",
         setup=profile(mini={"environment": {"BIG": "z" * 200000}})),
    Case("yaml-duplicate-key", "a key written twice in the profile (PyYAML would keep the last)",
         UP, ExitCode.PROFILE, "duplicate key 'mini' (first on line 2)", "remove one of the two",
         setup=profile_text("services:\n  mini: {model: Qwen/Qwen3-8B-AWQ, port: 5001}\n"
                            "  mini: {model: Qwen/Qwen3-1.7B-FP8, port: 5002}\n")),
    Case("yaml-alias-bomb", "a billion-laughs profile (aliases that expand to 10^9 values)", UP,
         ExitCode.PROFILE, "expands to more than 100,000 values through its aliases",
         "write the values out, or use fewer aliases", setup=profile_text(BILLION_LAUGHS)),
    Case("yaml-too-deep", "a profile nested hundreds of levels deep", UP, ExitCode.PROFILE,
         "nested more than 64 levels deep", "flatten it",
         setup=profile_text("services: " + "[" * 300 + "]" * 300 + "\n")),
    Case("profile-not-utf8", "a profile saved as Latin-1, not UTF-8", UP, ExitCode.PROFILE,
         "not UTF-8 text (byte 0xe9 on line 1)", "save it as UTF-8",
         setup=profile_bytes(b'description: "caf\xe9"\nservices: {}\n')),
    Case("bind-not-an-address", "`bind: 999.999.999.999`", UP, ExitCode.PROFILE,
         "bind: expected an IPv4 address", "use 127.0.0.1, 0.0.0.0 or an address of this host",
         setup=profile(mini={"bind": "999.999.999.999"})),
    Case("bind-not-this-host", "`bind:` an address this host does not have (192.0.2.1)", UP,
         ExitCode.PROFILE, "192.0.2.1 is not an address of this host",
         "use 127.0.0.1, 0.0.0.0 or an address `ip -4 addr` lists",
         setup=profile(mini={"bind": "192.0.2.1"})),
    Case("api-key-is-a-number", "`api_key: 12345678` (YAML reads an integer)", UP,
         ExitCode.PROFILE, "api_key: YAML read 12345678 as a int, not a key",
         "quote it", setup=profile(mini={"api_key": 12345678})),
    Case("model-wrong-case", "a model id in the wrong case", UP, ExitCode.PROFILE,
         "did you mean Qwen/Qwen3-8B-AWQ?", "use the id it suggests",
         setup=profile(mini={"model": "qwen/qwen3-8b-awq"})),
    Case("profile-is-a-directory", "`--profile` names a directory",
         ("plan", "-p", "{tmp}", "--gpus-file", "{gpus}"),
         ExitCode.PROFILE, "it is a directory", "name a profile file, a shipped profile or auto"),
    Case("alias-names-another-service", "an alias that is another service's name", UP,
         ExitCode.PROFILE, "services.mini.aliases: 'micro' is the name of services.micro",
         "choose another alias", setup=profile(mini={"aliases": ["micro"]})),
    Case("alias-looks-like-an-option", "an alias such as `-f` or one with spaces", UP,
         ExitCode.PROFILE, "'-f' is not a usable name",
         "letters, digits and ._- , starting with a letter or digit",
         setup=profile(mini={"aliases": ["-f"]})),
    Case("temperature-negative", "a negative temperature", UP, ExitCode.PROFILE,
         "temperature: expected a number from 0 to 2", "use 0 (greedy) or more",
         setup=profile(mini={"generation": {"temperature": -0.0000005}})),
    Case("models-native-context-zero", "a `models:` family with `native_context: 0`", UP,
         ExitCode.PROFILE, "native_context: expected a positive integer",
         "give the sizes of the model's config.json",
         setup=with_models(_tiny_family(native_context=0))),
    Case("models-number-as-text", "a `models:` size written as a string", UP, ExitCode.PROFILE,
         "max_position_embeddings: expected a positive integer", "write the number without quotes",
         setup=with_models(_tiny_family(max_position_embeddings="40960"))),
    Case("models-file-duplicate-key", "a `--models-file` with a key written twice",
         (*UP, "--models-file", "{tmp}/models.yaml"), ExitCode.PROFILE,
         "duplicate key 'layers'", "remove one of the two",
         setup=together(GOOD, file_in_tmp("models.yaml", "families:\n  X:\n    layers: 2\n"
                                                        "    layers: 3\n"))),
    Case("gpus-file-not-utf8", "a `--gpus-file` that is not UTF-8",
         ("plan", "-p", "{profile}", "--gpus-file", "{tmp}/latin1.json"), ExitCode.INVENTORY,
         "not UTF-8 text", "write it with `qwen-deploy gpus --json`",
         setup=together(GOOD, lambda ws: (ws.tmp / "latin1.json").write_bytes(
             b'{"gpus": [{"index": 0, "name": "caf\xe9"}]}') and None)),
    Case("deployment-name-too-long", "a 64-character deployment name",
         ("--deployment", "adv" + "x" * 61, *RENDER), ExitCode.STATE, "64 characters, at most 41",
         "choose a shorter name", setup=GOOD),
    # --- hardening: the deployment directory ----------------------------------------------------
    Case("env-file-lost", ".env deleted while the containers still hold its keys", RENDER,
         ExitCode.STATE, ".env is missing", "restore the keys from the containers (the message "
         "says how), or delete plan.json to issue new ones", setup=deployment_file(".env", None)),
    Case("endpoints-env-lost", "`endpoints` with .env deleted", ("endpoints",), ExitCode.STATE,
         ".env is missing", "restore the keys from the containers, or delete plan.json",
         setup=deployment_file(".env", None)),
    Case("env-file-not-utf8", ".env holding bytes that are not UTF-8", RENDER, ExitCode.STATE,
         "is not UTF-8 text", "fix it, or delete it and render again (new keys)",
         setup=deployment_file(".env", b"QWEN_DEPLOY_API_KEY_MINI=caf\xe9caf\xe9\n")),
    Case("plan-json-wrong-type", "plan.json with a field of the wrong type", ("status",),
         ExitCode.STATE, "plan.services[0].port: expected an integer",
         "`qwen-deploy up` (or `render`) writes it again", setup=plan_json(plan_port_as_text)),
    Case("state-dir-of-another-user", "the deployment directory belongs to another user",
         RENDER, ExitCode.STATE, "belongs to nobody, not to you",
         "a deployment must be yours alone: chown it back, or use your own --home",
         setup=owned_by_nobody(None)),
    Case("env-file-of-another-user", ".env belongs to another user (who could swap the keys)",
         RENDER, ExitCode.STATE, "belongs to nobody, not to you",
         "check its keys, then chown it back (or delete it: render writes new keys)",
         setup=owned_by_nobody(".env")),
    Case("state-dir-writable-by-others", "the deployment directory is writable by every user",
         RENDER, ExitCode.STATE, "may be changed by other users (mode 0777)", "`chmod go-w` it",
         setup=writable_by_others),
    Case("lock-is-a-symlink", "`.lock` is a symbolic link (planted to truncate another file)",
         RENDER, ExitCode.STATE, "symbolic link", "remove the link; nothing was truncated",
         setup=lock_is_a_symlink),
    Case("file-where-the-directory-goes", "a file stands where the deployment directory goes",
         ("--home", "{tmp}/home-with-a-file", "--deployment", "x", *RENDER), ExitCode.STATE,
         "is not a directory", "move the file away", setup=file_where_the_directory_goes),
    Case("home-under-a-file", "`--home` below a plain file", ("--home", "{tmp}/afile/sub",
         *RENDER), ExitCode.STATE, "Not a directory", "choose another --home",
         setup=together(GOOD, file_in_tmp("afile", "x\n"))),
    Case("deployment-locked", "another `up`/`down`/`render` is running on the deployment",
         RENDER, ExitCode.LOCKED, "is locked by pid 4242",
         "wait for it, or pass --wait SECONDS", setup=hold_lock),
    # --- hardening: the gateway reads the deployment's files as every command does -------------
    Case("gateway-env-writable-by-others", "`gateway serve` with .env writable by every user",
         GATEWAY_SERVE, ExitCode.STATE, ".env may be changed by other users (mode 0666)",
         "check its keys, then `chmod 600` it", setup=deployment_file_mode(".env", 0o666)),
    Case("gateway-plan-too-large", "`gateway serve` with a plan.json of 5 MiB", GATEWAY_SERVE,
         ExitCode.STATE, "plan.json is larger than 4 MiB",
         "`qwen-deploy render` writes it again",
         setup=hand_edit("plan.json", lambda text: text + " " * (5 << 20))),
    Case("gateway-plan-is-a-symlink", "the gateway's `--plan` is a symbolic link "
         "(`python -m deployer.gateway`, as its container runs)", GATEWAY_MODULE, ExitCode.STATE,
         "Too many levels of symbolic links", "replace the link by the file itself",
         setup=deployment_file_is_a_symlink("plan.json"), env=GATEWAY_ENV, runner="gateway"),
    Case("gateway-env-not-utf8", "the gateway's .env holds bytes that are not UTF-8",
         GATEWAY_MODULE, ExitCode.STATE, ".env is not UTF-8 text (byte 0xe9)",
         "fix it, or delete it and render again (new keys)", env=GATEWAY_ENV, runner="gateway",
         setup=deployment_file(".env", b"QWEN_DEPLOY_API_KEY_MINI=caf\xe9caf\xe9\n")),
    # --- hardening: bench's ShareGPT file (safeload's limits) ----------------------------------
    Case("bench-dataset-not-utf8", "`bench --dataset` with a file that is not UTF-8",
         (*BENCH_DATASET, "{tmp}/latin1-sharegpt.json"), ExitCode.STATE,
         "not UTF-8 text (byte 0xe9 on line 1)", "save it as UTF-8",
         setup=bytes_in_tmp("latin1-sharegpt.json", b'[{"conversations": [{"from": "human", '
                             b'"value": "caf\xe9"}, {"from": "gpt", "value": "oui"}]}]')),
    Case("bench-dataset-too-deep", "`bench --dataset` with JSON nested hundreds of levels deep",
         (*BENCH_DATASET, "{tmp}/deep-sharegpt.json"), ExitCode.STATE,
         "is not JSON (nested more than 64 levels deep)", "give it a ShareGPT file",
         setup=bytes_in_tmp("deep-sharegpt.json", b"[" * 300 + b"]" * 300)),
    Case("bench-dataset-nan", "`bench --dataset` with NaN in the JSON",
         (*BENCH_DATASET, "{tmp}/nan-sharegpt.json"), ExitCode.STATE,
         "is not JSON (NaN is not a number JSON allows)", "give it a ShareGPT file",
         setup=bytes_in_tmp("nan-sharegpt.json", b'[{"conversations": NaN}]')),
    Case("bench-dataset-fifo", "`bench --dataset` names a named pipe (or a device)",
         (*BENCH_DATASET, "{tmp}/sharegpt.fifo"), ExitCode.STATE, "is not a regular file",
         "name a JSON file", setup=fifo_in_tmp("sharegpt.fifo")),
    # --- D32(e): the planner says which setting to lower ---------------------------------------
    Case("max-num-seqs-huge", "`max_num_seqs: 65536` (vLLM sizes buffers and graphs for it)", UP,
         ExitCode.PLAN, "mini: lower max_num_seqs to 2048 or less (it is 65536)",
         "lower max_num_seqs to the value the fix names",
         setup=profile(mini={"max_num_seqs": 65536})),
    Case("max-num-batched-tokens-huge", "`max_num_batched_tokens: 1048576` (activations for it)",
         UP, ExitCode.PLAN, "mini: lower max_num_batched_tokens to 52736 or less (it is 1048576)",
         "lower max_num_batched_tokens to the value the fix names",
         setup=profile(mini={"max_num_batched_tokens": 1048576})),
)  # fmt: skip


# --- requests to the gateway ---------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayCase:
    """A bad HTTP request to the gateway (`gateway serve`, or its container) and its answer:
    the status and, in the error's message, the fragment: OpenAI's error shape with the request
    id on /v1, seed 004's {"response", "success": false, "error"} on /api/v1 (an SSE error event
    on its stream). tests/integration/test_gateway_bad_input.py sends each one to the gateway in
    front of stand-in tiers and checks that the tiers saw none of them."""

    id: str
    situation: str  # what the client did, for the README
    method: str
    path: str
    body: bytes
    status: int
    fragment: str  # the error message contains this
    fix: str
    # {key} is the gateway's key. Content-Length is sent as len(body) + padding.
    headers: tuple[tuple[str, str], ...] = (
        ("Authorization", "Bearer {key}"),
        ("Content-Type", "application/json"),
    )
    padding: int = 0  # spaces after the body (JSON allows them): a large body without its bytes
    # Send the headers alone and wait for the answer (`Expect: 100-continue`, as curl does for
    # a large body): the gateway must refuse a declared length without reading the body.
    expect_continue: bool = False


def chat_body(**fields: Any) -> bytes:
    body = {"model": "mini", "messages": [{"role": "user", "content": "bonjour"}], "max_tokens": 8}
    return json.dumps({**body, **fields}).encode()


def _latin1_chat(path: str) -> bytes:
    if path.startswith("/api/"):
        return '{"message": "café au lait"}'.encode("latin-1")
    return '{"model": "mini", "messages": [{"role": "user", "content": "café"}]}'.encode("latin-1")


CHAT = "/v1/chat/completions"
SEED_CHAT = "/api/v1/chat"
GATEWAY_MAX_BODY = 8 << 20  # gateway.limits.max_body_mib: 8 by default

GATEWAY_CASES: tuple[GatewayCase, ...] = (
    GatewayCase("gw-body-not-json", "a chat request whose body is not JSON (cut short)", "POST",
                CHAT, b'{"model": "mini", "messages": [', 400,
                "the request body is not valid JSON", "send one JSON object (`jq -n` or a JSON "
                "library builds it; pasted quotes break it)"),
    GatewayCase("gw-body-not-utf8", "accented text the shell re-encoded as Latin-1 (seed 000's "
                "\"There was an error parsing the body\")", "POST", CHAT, _latin1_chat(CHAT),
                400, "the request body is not UTF-8: byte 0xe9 at offset",
                "save the JSON as a UTF-8 file and send it with `curl --data-binary @body.json`"),
    GatewayCase("gw-seed-body-not-utf8", "the same on seed 004's `POST /api/v1/chat`", "POST",
                SEED_CHAT, _latin1_chat(SEED_CHAT), 400, "is not UTF-8: byte 0xe9 at offset",
                "save the JSON as a UTF-8 file and send it with `curl --data-binary @body.json`"),
    GatewayCase("gw-body-not-an-object", "a JSON body that is a list, not an object", "POST",
                CHAT, b'[{"role": "user", "content": "hi"}]', 400,
                "the request body must be a JSON object", 'send `{"model": …, "messages": [...]}`'),
    GatewayCase("gw-unknown-model", "a `model` no tier serves", "POST", CHAT,
                chat_body(model="qwen-9000"), 404, "The model `qwen-9000` does not exist",
                "use a name `GET /v1/models` lists: a served name, a tier, an alias or auto"),
    GatewayCase("gw-model-not-text", "`model` that is not a string", "POST", CHAT,
                chat_body(model=42), 400, "model: expected a string, got int",
                "quote the model name"),
    GatewayCase("gw-no-messages", "a chat request without `messages`", "POST", CHAT,
                b'{"model": "mini"}', 400, "messages: expected a non-empty list of messages",
                'send `"messages": [{"role": "user", "content": "…"}]`'),
    GatewayCase("gw-completion-no-prompt", "`/v1/completions` without a `prompt`", "POST",
                "/v1/completions", b'{"model": "mini", "max_tokens": 8}', 400,
                "prompt: expected a prompt", "send a prompt (text or token ids)"),
    GatewayCase("gw-seed-no-message", "seed 004's chat without a `message`", "POST", SEED_CHAT,
                b'{"history": []}', 400, "message: expected a non-empty string",
                'send `{"message": "…", "history": [...]}`'),
    GatewayCase("gw-seed-unknown-field", "seed 004's chat with a misspelt field", "POST",
                SEED_CHAT, b'{"message": "hi", "temprature": 0.2}', 400,
                "unknown field 'temprature'", "use the fields the message lists"),
    GatewayCase("gw-context-exceeded-auto", "`model: auto` asking for more tokens than any tier's "
                "context holds", "POST", CHAT, chat_body(model="auto", max_tokens=1_000_000), 400,
                "the largest context available is 32768 tokens",
                "shorten the prompt or lower max_tokens"),
    GatewayCase("gw-context-exceeded-tier", "a tier named, asking for more than its context",
                "POST", CHAT, chat_body(model="micro", max_tokens=100_000), 400,
                "cannot be greater than max_model_len=16384",
                "lower max_tokens, or send `model: auto` to pick a tier whose context holds it"),
    GatewayCase("gw-no-key", "a request without `Authorization`", "POST", CHAT, chat_body(), 401,
                "Unauthorized: no API key", "send `Authorization: Bearer <gateway key>` "
                "(`qwen-deploy endpoints --show-keys`)",
                headers=(("Content-Type", "application/json"),)),
    GatewayCase("gw-wrong-key", "a key that is not a gateway key (a tier's own key, say)", "POST",
                CHAT, chat_body(), 401, "Unauthorized: wrong API key",
                "use the gateway's key (`qwen-deploy endpoints --show-keys`); tiers' keys stay "
                "behind it", headers=(("Authorization", "Bearer test-key-mini"),
                                      ("Content-Type", "application/json"))),
    GatewayCase("gw-body-too-large", "a body above the gateway's limit (8 MiB by default)",
                "POST", CHAT, chat_body(), 413,
                f"bytes; the limit is {GATEWAY_MAX_BODY}",
                "send less, or raise the profile's `gateway: {limits: {max_body_mib: …}}`",
                padding=GATEWAY_MAX_BODY, expect_continue=True),
    GatewayCase("gw-wrong-method", "`GET` on the chat endpoint", "GET", CHAT, b"", 405,
                "GET /v1/chat/completions: Method Not Allowed", "POST it"),
    GatewayCase("gw-unknown-path", "a path the gateway does not have (`/v1/chat`)", "POST",
                "/v1/chat", chat_body(), 404, "POST /v1/chat: Not Found",
                "use /v1/chat/completions, /v1/completions or seed 004's /api/v1/chat"),
)  # fmt: skip


@dataclass(frozen=True)
class GatewayOutcome:
    status: int
    headers: dict[str, str]
    body: bytes


def send_gateway_case(case: GatewayCase, host: str, port: int, key: str) -> GatewayOutcome:
    """The request exactly as the case gives it (http.client: no client-side JSON encoding or
    body checks), and the answer."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest(case.method, case.path, skip_accept_encoding=True)
        for name, value in case.headers:
            conn.putheader(name, value.format(key=key))
        if case.body or case.padding or case.method != "GET":
            conn.putheader("Content-Length", str(len(case.body) + case.padding))
        if case.expect_continue:
            conn.putheader("Expect", "100-continue")
            conn.endheaders()
        else:
            conn.endheaders(case.body + b" " * case.padding)
        answer = conn.getresponse()
        body = answer.read()
        return GatewayOutcome(answer.status, {k.lower(): v for k, v in answer.getheaders()}, body)
    finally:
        conn.close()


def gateway_error_message(case: GatewayCase, outcome: GatewayOutcome) -> str:
    """The error message in the shape the path promises; AssertionError if the shape is off."""
    shown = f"{outcome.status} {outcome.headers}\n{outcome.body[:2000]!r}"
    rid = outcome.headers.get("x-request-id", "")
    if outcome.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in outcome.body.decode().splitlines()
                  if line.startswith("data: ")]  # fmt: skip
        errors = [e["content"] for e in events if e.get("type") == "error"]
        assert len(errors) == 1, shown
        return str(errors[0])
    doc = json.loads(outcome.body)
    if case.path.startswith("/api/"):  # seed 004's shape
        assert doc["success"] is False and doc["response"] == "", shown
        assert doc["request_id"] == rid != "", shown
        return str(doc["error"])
    error = doc["error"]  # OpenAI's shape, as vLLM answers
    assert error["code"] == outcome.status and isinstance(error["type"], str), shown
    assert error["request_id"] == rid != "", shown
    return str(error["message"])


def check_gateway_outcome(case: GatewayCase, outcome: GatewayOutcome) -> None:
    shown = f"{outcome.status} {outcome.headers}\n{outcome.body[:2000]!r}"
    assert outcome.status == case.status, shown
    message = gateway_error_message(case, outcome)
    assert case.fragment in message, shown
    assert "\n" not in message and "Traceback" not in message, shown


# --- running a case -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def entry_point() -> list[str]:
    """The installed `qwen-deploy` console script of this interpreter (venv or not)."""
    script = Path(sys.executable).parent / "qwen-deploy"
    if not script.is_file():
        raise RuntimeError(f"{script} is missing: install the project (`pip install -e .`)")
    return [str(script)]


def without_dac_override(command: list[str]) -> list[str]:
    """Run `command` the way a user outside the docker group runs: for root, without the
    capabilities that let it open any file (a non-root user has none of them anyway)."""
    if os.geteuid() != 0:
        return command
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]


def run_case(case: Case, ws: Workspace, base_env: dict[str, str | None]) -> Outcome:
    args = ["--home", str(ws.home), "--deployment", ws.deployment]
    args += [ws.format(a) for a in case.args]
    env: dict[str, str | None] = {"NO_COLOR": "1", "HF_TOKEN": None, **base_env}
    env.update({k: None if v is None else ws.format(v) for k, v in case.env})
    if case.runner == "cli":
        from click.testing import CliRunner

        from deployer.cli.main import cli

        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        return Outcome(result.exit_code, result.stdout, result.stderr)
    full = {k: v for k, v in os.environ.items() if k not in env or env[k] is not None}
    full.update({k: v for k, v in env.items() if v is not None})
    if case.runner == "gateway":
        command = [sys.executable, "-m", "deployer.gateway", *args[4:]]
    else:
        assert case.runner == "no-dac", case.runner
        command = without_dac_override([*entry_point(), *args])
    done = subprocess.run(
        command,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def check_outcome(case: Case, outcome: Outcome) -> None:
    """One `error:` line with the fragment, the case's exit code, no traceback, no stdout."""
    shown = f"exit {outcome.code}\nstdout: {outcome.stdout!r}\nstderr: {outcome.stderr!r}"
    assert outcome.code == case.code, shown
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    assert outcome.stdout == "", shown
    lines = outcome.stderr.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("error: "), shown
    if case.progress:  # a pull that failed: its progress lines, then the error
        assert all(line.startswith("  ") for line in lines[:-1]), shown
    else:
        assert len(lines) == 1, shown
    assert case.fragment in lines[-1], shown


# --- "changes nothing" ----------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root but lock files: mode, inode (an atomic rewrite makes a new one) and
    a digest of the contents."""
    found = {}
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if path.is_file() and path.name != ".lock":
            data = path.read_bytes()
            info = path.stat()
            found[str(path.relative_to(root))] = (
                info.st_mode,
                info.st_ino,
                hashlib.sha256(data).hexdigest(),
            )
    return found


@contextlib.contextmanager
def restored(directory: Path) -> Iterator[None]:
    """Put the directory's files back as they were (a case's setup edits them by hand)."""
    saved = {p: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    try:
        yield
    finally:
        for path in directory.iterdir():
            if path.is_file() and path not in saved:
                path.unlink()
        for path, data in saved.items():
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)


# --- the README's table ---------------------------------------------------------------------------


def markdown_table() -> str:
    """The troubleshooting table, one row per case, for docs/ and the README."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    def code(text: str) -> str:  # a code span around text that has backticks takes two
        return f"`` {cell(text)} ``" if "`" in text else f"`{cell(text)}`"

    lines = [
        "| case | what happened | exit | the error line says | what to do |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        lines.append(
            f"| `{case.id}` | {cell(case.situation)} | {int(case.code)} "
            f"{case.code.name.lower()} | {code(case.fragment.strip())} | {cell(case.fix)} |"
        )
    lines += [
        "",
        "Requests to the gateway (`gateway serve`, or the `gateway` service of a deployment):",
        "",
        "| case | what the client sent | request | HTTP | the error message says | what to do |",
        "|---|---|---|---|---|---|",
    ]
    for gw in GATEWAY_CASES:
        lines.append(
            f"| `{gw.id}` | {cell(gw.situation)} | `{gw.method} {gw.path}` | {gw.status} "
            f"| {code(gw.fragment)} | {cell(gw.fix)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
