"""Faults on the real Docker engine, with the stand-in's fault modes (STANDIN_FAULT): services
that crash or never become healthy while starting, containers killed or dying once deployed,
two commands at once on one deployment, Ctrl-C during `up`, and a process killed while it
writes the deployment directory. Each test has its own deployment and removes it."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from deployer.errors import ExitCode
from tests.bad_input_cases import entry_point
from tests.helpers.deployments import KEYS, Deployment, tri_tier_profile, write_inventory

pytestmark = pytest.mark.integration


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 90, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _models_ok(deployment: Deployment, service: str) -> bool:
    try:
        answer = requests.get(
            f"http://127.0.0.1:{deployment.ports[service]}/v1/models",
            headers={"Authorization": f"Bearer {KEYS[service]}"},
            timeout=5,
        )
    except requests.RequestException:
        return False
    return answer.status_code == 200


def _status(deployment: Deployment) -> dict[str, dict[str, Any]]:
    result = deployment.cli("status", "--json")
    assert result.exit_code == 0, result.output
    return {row["service"]: row for row in json.loads(result.stdout)["services"]}


def _attrs(container: Any) -> dict[str, Any]:
    container.reload()
    return dict(container.attrs)


def _chat(deployment: Deployment, service: str) -> requests.Response:
    plan = json.loads((deployment.home / deployment.name / "plan.json").read_text())
    model = next(s["served_model_name"] for s in plan["services"] if s["name"] == service)
    return requests.post(
        f"http://127.0.0.1:{deployment.ports[service]}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS[service]}"},
        json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
        timeout=30,
    )


class Process:
    """`qwen-deploy …` as a child process (the installed entry point), its stderr read line by
    line as it comes."""

    def __init__(self, deployment: Deployment, *args: str) -> None:
        env = {**os.environ, "NO_COLOR": "1", "HF_TOKEN": ""}
        command = [*entry_point(), "--home", str(deployment.home), "--deployment"]
        self.popen = subprocess.Popen(
            [*command, deployment.name, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        # One reader per pipe, and nothing else reads them (communicate() would take lines).
        self.readers = [
            threading.Thread(target=self._read, args=(self.popen.stderr, True), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stdout, False), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, pipe: Any, is_stderr: bool) -> None:
        for line in pipe:
            if is_stderr:
                self.stderr.append(line)
                self.lines.put(line)
            else:
                self.stdout.append(line)

    def wait_for_line(self, needle: Callable[[str], bool], timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    break
                continue
            if needle(line):
                return line
        self.popen.kill()
        pytest.fail(f"no such line within {timeout} s; stderr so far:\n{''.join(self.stderr)}")

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        """Wait for the exit; (exit status, stdout, stderr)."""
        code = self.popen.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return code, "".join(self.stdout), "".join(self.stderr)


def _progress(service: str, stage: str) -> Callable[[str], bool]:
    return lambda line: line.split()[:1] == [service] and stage in line


# --- failing starts -----------------------------------------------------------------------------


def test_a_crash_during_start_is_reported_and_a_second_up_repairs_only_it(
    deployment: Deployment,
) -> None:
    deployment.write_profile(medium={"environment": {"STANDIN_FAULT": "crash_on_start"}})
    result = deployment.up("--no-verify")
    assert result.exit_code == ExitCode.DEPLOY, result.output
    assert "error: medium did not become ready: the container exited with code 1" in result.stderr
    assert "last log lines of medium:" in result.stderr
    assert "RuntimeError: CUDA error: an illegal memory access was encountered" in result.stderr
    containers = deployment.containers()
    assert containers["medium"].status == "exited"  # stopped and kept for `logs`
    for name in ("mini", "micro"):
        assert containers[name].status == "running"
        assert _models_ok(deployment, name)
    kept = {name: containers[name].id for name in ("mini", "micro")}

    deployment.write_profile()  # the fault removed
    again = deployment.up()
    assert again.exit_code == 0, again.output
    lines = {line.split()[0]: line.split() for line in again.stdout.splitlines()[1:4]}
    assert lines["medium"][1] == "recreate"
    assert lines["mini"][1] == lines["micro"][1] == "keep"
    now = deployment.ids()
    assert {name: now[name] for name in kept} == kept  # only the broken one was touched
    assert now["medium"] != containers["medium"].id
    assert "checks passed" in again.stdout


def test_a_service_that_never_becomes_healthy_times_out_with_its_logs(
    deployment: Deployment,
) -> None:
    deployment.write_profile(micro={"environment": {"STANDIN_FAULT": "never_healthy"}})
    started = time.monotonic()
    result = deployment.up("--no-verify", "--timeout", "6")
    assert result.exit_code == ExitCode.DEPLOY, result.output
    assert time.monotonic() - started < 60
    assert "error: micro did not become ready: not ready after" in result.stderr
    assert "GET /v1/models: HTTP 503" in result.stderr
    assert "last log lines of micro:" in result.stderr
    assert '"GET /v1/models HTTP/1.1" 503' in result.stderr  # the lines that explain it
    containers = deployment.containers()
    assert containers["micro"].status == "exited"
    assert _attrs(containers["micro"])["HostConfig"]["RestartPolicy"]["Name"] == "no"
    for name in ("medium", "mini"):
        assert containers[name].status == "running"
    kept = {name: containers[name].id for name in ("medium", "mini")}
    status = _status(deployment)
    assert status["micro"]["state"] == "exited"
    assert status["medium"]["state"] == status["mini"]["state"] == "running"

    deployment.write_profile()
    again = deployment.up()
    assert again.exit_code == 0, again.output
    now = deployment.ids()
    assert {name: now[name] for name in kept} == kept
    assert deployment.containers()["micro"].status == "running"


# --- after deployment ---------------------------------------------------------------------------


def test_a_killed_container_shows_in_status_and_up_restores_it(deployment: Deployment) -> None:
    assert deployment.up("--no-verify").exit_code == 0
    mini = deployment.containers()["mini"]
    mini.kill()  # `docker kill`: Docker counts it as stopped by hand, so it stays down
    status = _status(deployment)
    assert status["mini"]["state"] == "exited" and status["mini"]["exit_code"] == 137
    assert status["micro"]["state"] == "running"
    summary = json.loads(deployment.cli("status", "--json").stdout)["summary"]
    assert "2/3 running" in summary and "1 exited" in summary
    time.sleep(3)
    assert deployment.containers()["mini"].status == "exited"

    before = deployment.ids()
    result = deployment.up()
    assert result.exit_code == 0, result.output
    assert deployment.ids() == before  # started again, not recreated
    assert [line.split()[1] for line in result.stdout.splitlines()[1:4]].count("start") == 1
    assert _status(deployment)["mini"]["state"] == "running"


def test_a_process_that_dies_after_deployment_is_restarted_by_the_policy(
    deployment: Deployment,
) -> None:
    assert deployment.up("--no-verify").exit_code == 0
    medium = deployment.containers()["medium"]
    attrs = _attrs(medium)
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    # What the kernel's OOM killer or a segfault does: the engine did not ask for it.
    os.kill(attrs["State"]["Pid"], signal.SIGKILL)
    _wait_for("the restart policy to restart medium", lambda: _attrs(medium)["RestartCount"] >= 1)
    _wait_for("medium to answer again", lambda: _models_ok(deployment, "medium"))
    status = _status(deployment)
    assert status["medium"]["state"] == "running"
    assert status["medium"]["restart_count"] >= 1
    assert deployment.cli("verify").exit_code == 0


def test_an_engine_that_dies_after_n_requests_is_restarted_by_the_policy(
    deployment: Deployment,
) -> None:
    deployment.write_profile(micro={"environment": {"STANDIN_FAULT": "die_after:4"}})
    assert deployment.up("--no-verify").exit_code == 0
    micro = deployment.containers()["micro"]
    for _ in range(4):
        try:
            _chat(deployment, "micro")
        except requests.RequestException:
            break  # the fourth may be cut off as the engine dies
    _wait_for("the restart policy to restart micro", lambda: _attrs(micro)["RestartCount"] >= 1)
    logs = micro.logs().decode(errors="replace")
    assert "EngineCore encountered a fatal error (after 4 chat requests" in logs
    # It restarts behind the start gate: mini, on the same GPU, is up, so it goes straight on.
    _wait_for("micro to answer again", lambda: _models_ok(deployment, "micro"))
    assert _status(deployment)["micro"]["restart_count"] >= 1
    verify = deployment.cli("verify", "micro")  # three chat requests: below the fault's four
    assert verify.exit_code == 0, verify.output


def test_a_hand_broken_plan_json_is_reported_repaired_by_up_and_does_not_block_down(
    deployment: Deployment,
) -> None:
    assert deployment.up("--no-verify").exit_code == 0
    plan_json = deployment.home / deployment.name / "plan.json"
    good = plan_json.read_text()
    plan_json.write_text(good[: len(good) // 3])  # an editor that crashed mid-save
    status = deployment.cli("status")
    assert status.exit_code == ExitCode.STATE
    assert "plan.json is not a valid plan" in status.stderr
    before = deployment.ids()
    repaired = deployment.up("--no-verify")  # plans again from the profile and rewrites it
    assert repaired.exit_code == 0, repaired.output
    assert plan_json.read_text() == good and deployment.ids() == before

    plan_json.write_text("{")
    down = deployment.cli("down")
    assert down.exit_code == 0, down.output
    assert "warning:" in down.stderr and "stopping the containers by their labels" in down.stderr
    assert deployment.containers() == {}


# --- two commands at once -----------------------------------------------------------------------


def test_two_commands_at_once_are_serialised_by_the_lock(deployment: Deployment) -> None:
    slow = {"environment": {"STANDIN_LOAD_SECONDS": "3"}}
    deployment.write_profile(medium=slow, mini=slow, micro=slow)
    lock = deployment.home / deployment.name / ".lock"
    up_args = ["--gpus-file", str(deployment.gpus_file), "--engine", "stand-in", "--no-verify"]
    first = Process(deployment, "up", "-p", str(deployment.profile), *up_args)
    holder = f"pid {first.popen.pid}"
    _wait_for(
        "the first up to hold the lock", lambda: lock.is_file() and lock.read_text() == holder
    )

    second = deployment.up("--no-verify")
    assert second.exit_code == ExitCode.LOCKED, second.output
    assert second.stderr == (
        f"error: deployment '{deployment.name}' is locked by {holder} "
        "(wait for it to finish, or pass --wait SECONDS)\n"
    )
    down = deployment.cli("down")
    assert down.exit_code == ExitCode.LOCKED, down.output
    assert holder in down.stderr

    waiting = Process(deployment, "up", "-p", str(deployment.profile), *up_args, "--wait", "120")
    code, stdout, stderr = first.finish()
    assert code == 0, stderr
    assert "3/3 services ready" in stdout and "(3 created)" in stdout
    code, stdout, stderr = waiting.finish()
    assert code == 0, stderr
    assert "(3 unchanged)" in stdout  # it ran after the first, never in the middle of it
    assert lock.read_text() == ""  # released


# --- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_during_up_leaves_started_containers_running_and_status_true(
    deployment: Deployment,
) -> None:
    deployment.write_profile(micro={"environment": {"STANDIN_LOAD_SECONDS": "8"}})
    up = Process(
        deployment,
        "up",
        "-p",
        str(deployment.profile),
        "--gpus-file",
        str(deployment.gpus_file),
        "--engine",
        "stand-in",
        "--no-verify",
    )
    up.wait_for_line(_progress("mini", "healthy"))
    up.wait_for_line(_progress("micro", "loading model"))  # micro started, still loading
    up.popen.send_signal(signal.SIGINT)
    code, _stdout, stderr = up.finish(timeout=60)
    assert code == ExitCode.INTERRUPTED, stderr
    # What the README says Ctrl-C does: started containers keep running, and how to go on.
    assert "interrupted: started containers keep running (" in stderr
    said = stderr.split("interrupted: started containers keep running (", 1)[1].split(")")[0]
    assert set(said.split(", ")) == {"medium", "mini", "micro"}
    assert stderr.rstrip().endswith("interrupted")
    assert "Traceback" not in stderr

    containers = deployment.containers()
    status = _status(deployment)
    for name, container in containers.items():  # status says what the engine says
        assert status[name]["state"] == _attrs(container)["State"]["Status"] == "running"
    # micro was still loading: its restart policy is armed by the next `up`, once it is ready.
    assert _attrs(containers["micro"])["HostConfig"]["RestartPolicy"]["Name"] == "no"
    before = deployment.ids()
    again = deployment.up("--no-verify")
    assert again.exit_code == 0, again.output
    assert deployment.ids() == before
    assert _attrs(containers["micro"])["HostConfig"]["RestartPolicy"]["Name"] == "always"


def test_sigterm_during_up_names_what_started_and_gives_it_its_restart_policy(
    deployment: Deployment,
) -> None:
    # D12: systemd, `timeout` or a cancelled CI job sends SIGTERM, not SIGINT.
    deployment.write_profile(micro={"environment": {"STANDIN_LOAD_SECONDS": "8"}})
    up = Process(
        deployment,
        "up",
        "-p",
        str(deployment.profile),
        "--gpus-file",
        str(deployment.gpus_file),
        "--engine",
        "stand-in",
        "--no-verify",
    )
    up.wait_for_line(_progress("mini", "healthy"))
    up.wait_for_line(_progress("micro", "loading model"))  # micro started, still loading
    up.popen.send_signal(signal.SIGTERM)
    code, _stdout, stderr = up.finish(timeout=60)
    assert code == ExitCode.TERMINATED == 143, stderr
    assert "terminated: started containers keep running (" in stderr
    said = stderr.split("terminated: started containers keep running (", 1)[1].split(")")[0]
    assert set(said.split(", ")) == {"medium", "mini", "micro"}
    assert "with their restart policy" in stderr
    assert stderr.rstrip().endswith("terminated")
    assert "Traceback" not in stderr
    containers = deployment.containers()
    for name, container in containers.items():
        attrs = _attrs(container)
        assert attrs["State"]["Status"] == "running", name
        # Unlike Ctrl-C, nobody is there to run `up` again: micro, still loading, is armed too.
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always", name
    before = deployment.ids()
    again = deployment.up("--no-verify")
    assert again.exit_code == 0, again.output
    assert deployment.ids() == before  # nothing recreated: `up` carries on


# --- atomic writes --------------------------------------------------------------------------------

RENDER_LOOP = """
import sys
from deployer.cli.main import cli
home, gpus, *profiles = sys.argv[1:]
i = 0
while True:
    args = ["--home", home, "--deployment", "atomic", "render", "-p", profiles[i % 2],
            "--gpus-file", gpus, "--engine", "stand-in"]
    try:
        cli.main(args, standalone_mode=False)
    except SystemExit:
        pass
    i += 1
    sys.stderr.write(f"rendered {i}\\n")
    sys.stderr.flush()
"""


def test_a_writer_killed_mid_render_never_leaves_a_truncated_file(tmp_path: Path) -> None:
    """SIGKILL a process that renders two different profiles in turn, at random moments, many
    times: every compose.yaml, .env and plan.json found is one of the two complete versions."""
    from click.testing import CliRunner

    from deployer.cli.main import cli

    gpus = write_inventory(tmp_path / "gpus.json", 0)
    ports = {"medium": 15002, "mini": 15001, "micro": 15000}
    variants = {
        "a": tri_tier_profile(ports),
        "b": tri_tier_profile(ports, micro={"context": 8192, "api_key": "other-key-micro"}),
    }
    expected: dict[str, set[str]] = {"compose.yaml": set(), ".env": set(), "plan.json": set()}
    for name, data in variants.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        home = tmp_path / f"home-{name}"
        args = ["--home", str(home), "--deployment", "atomic", "render", "-p", str(path)]
        result = CliRunner().invoke(cli, [*args, "--gpus-file", str(gpus), "--engine", "stand-in"])
        assert result.exit_code == 0, result.output
        for file in expected:
            expected[file].add((home / "atomic" / file).read_text())
    assert all(len(texts) == 2 for texts in expected.values())

    directory = tmp_path / "home" / "atomic"
    killed_mid_write = 0
    rng = random.Random(1234)
    for attempt in range(40):
        loop = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RENDER_LOOP,
                str(tmp_path / "home"),
                str(gpus),
                str(tmp_path / "a.yaml"),
                str(tmp_path / "b.yaml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert loop.stderr is not None
        loop.stderr.readline()  # one full render first
        if attempt % 2:
            time.sleep(rng.uniform(0.0, 0.12))  # then anywhere ...
        else:  # ... or the moment a temp file shows that it writes
            deadline = time.monotonic() + 5
            while not any(n.name.endswith(".tmp") for n in os.scandir(directory)):
                if time.monotonic() > deadline:
                    break
        loop.kill()
        loop.wait()
        if list(directory.glob(".*.tmp")):
            killed_mid_write += 1
        for file, texts in expected.items():
            assert (directory / file).read_text() in texts, f"{file} is not a complete version"
        assert (directory / ".env").stat().st_mode & 0o777 == 0o600
    # The kills did land inside writes (the temp files they left prove it) ...
    assert killed_mid_write >= 1, killed_mid_write
    print(f"\n{killed_mid_write} of 40 kills left a temp file behind")
    # ... and the next render clears what they left.
    result = CliRunner().invoke(
        cli,
        [
            "--home",
            str(tmp_path / "home"),
            "--deployment",
            "atomic",
            "render",
            "-p",
            str(tmp_path / "a.yaml"),
            "--gpus-file",
            str(gpus),
            "--engine",
            "stand-in",
        ],
    )
    assert result.exit_code == 0, result.output
    assert not list(directory.glob(".*.tmp"))
