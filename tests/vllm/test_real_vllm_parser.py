"""Rendered `vllm serve` arguments against the real vLLM (CPU build): its own parser, its own
EngineArgs and config validation, and the stand-in's verdict on the same argument lists.

Run with scripts/vllm-check.sh (the default test run deselects the `vllm` marker). Nothing here
downloads a model: EngineArgs.create_engine_config runs against local directories holding the
checkpoints' config.json and a tiny tokenizer, never weights.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.catalog import load_catalog
from deployer.planner import ServicePlan
from deployer.spec import vllm_args
from deployer.vllm_pin import CONTAINER_PORT, QUANTIZATION_FLAG, VLLM_VERSION
from tests.vllm.cases import SERVICES
from tests.vllm.tiny_qwen3 import checkpoint_config, write_config_only

pytestmark = pytest.mark.vllm

QWEN3_ROPE_THETA = 1000000  # every Qwen3 config.json (section 1 of the vLLM facts notes)


class RealVllm:
    """`vllm serve`'s parser exactly as vllm/entrypoints/cli/main.py builds it, plus the
    steps ServeSubcommand takes before the engine starts."""

    def __init__(self, checkpoint_dir: Callable[[str], Path]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        self.engine_args_cls = AsyncEngineArgs
        self.command = ServeSubcommand()
        self.parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
        subparsers = self.parser.add_subparsers(required=False, dest="subparser")
        self.command.subparser_init(subparsers).set_defaults(dispatch_function=self.command.cmd)
        self.checkpoint_dir = checkpoint_dir

    def parse(self, argv: tuple[str, ...] | list[str]) -> argparse.Namespace:
        """Parse and validate like `vllm serve ARGV` (argparse errors raise SystemExit(2))."""
        ns = self.parser.parse_args(["serve", *argv])
        self.command.validate(ns)
        if ns.model_tag is not None:  # ServeSubcommand.cmd: the positional model wins
            ns.model = ns.model_tag
        return ns

    def engine_args(self, ns: argparse.Namespace) -> Any:
        """EngineArgs.from_cli_args with the model swapped for its local config.json (with
        HF_HUB_OFFLINE set, from_cli_args resolves a hub id to a cached snapshot)."""
        ns = argparse.Namespace(**vars(ns))
        ns.model = str(self.checkpoint_dir(ns.model))
        return self.engine_args_cls.from_cli_args(ns)

    def engine_config(self, argv: tuple[str, ...] | list[str]) -> Any:
        return self.engine_args(self.parse(argv)).create_engine_config()

    def outcome(self, argv: tuple[str, ...] | list[str]) -> tuple[str, str]:
        """How `vllm serve ARGV` ends: ('ok' | 'exit 2' (usage) | 'exit 1' (start-up), why)."""
        try:
            self.engine_config(argv)
        except SystemExit as exc:
            return f"exit {exc.code}", ""
        except Exception as exc:
            return "exit 1", f"{type(exc).__name__}: {exc}"
        return "ok", ""


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> RealVllm:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import: nothing may reach a hub
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    # Not bare "vllm": without vLLM, tests/vllm itself imports as a namespace package "vllm".
    pytest.importorskip("vllm.engine.arg_utils", reason="needs vLLM: scripts/vllm-check.sh")
    catalog = load_catalog()
    made: dict[str, Path] = {}

    def checkpoint_dir(model: str) -> Path:
        if model not in made:
            directory = tmp_path_factory.mktemp(model.replace("/", "--"))
            made[model] = write_config_only(directory, checkpoint_config(catalog.get(model)))
        return made[model]

    return RealVllm(checkpoint_dir)


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@pytest.fixture
def standin_outcome(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[str]], str]]:
    """The stand-in's verdict on `vllm serve ARGV`: parse, then everything before it listens."""
    from deployer.standin import cli_args, process, startup

    def end(code: int) -> Any:
        raise _Exit(code)

    monkeypatch.setattr(process, "release_and_exit", end)

    def outcome(argv: list[str]) -> str:
        try:
            cli_args.parse_serve_args(argv)
            startup.startup(argv, {"STANDIN_LOAD_SECONDS": "0"})
        except SystemExit as exc:
            return f"exit {exc.code}"
        except _Exit as exc:
            return f"exit {exc.code}"
        return "ok"

    yield outcome


def _yarn(service: ServicePlan) -> bool:
    return service.yarn_factor is not None and service.yarn_factor > 1


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_real_parser_reads_the_plan_back(real_vllm: RealVllm, name: str) -> None:
    service = SERVICES[name]
    ns = real_vllm.parse(vllm_args(service))
    assert ns.model == ns.model_tag == service.model
    assert ns.served_model_name == [service.served_model_name]
    assert (ns.host, ns.port) == ("0.0.0.0", CONTAINER_PORT)
    assert ns.tensor_parallel_size == service.tensor_parallel_size
    assert ns.gpu_memory_utilization == pytest.approx(service.gpu_memory_utilization, rel=1e-5)
    assert ns.max_model_len == service.max_model_len
    assert ns.max_num_seqs == service.max_num_seqs
    assert ns.max_num_batched_tokens == service.max_num_batched_tokens
    assert ns.kv_cache_dtype == service.kv_cache_dtype
    assert ns.quantization == QUANTIZATION_FLAG[service.quantization]
    assert (ns.reasoning_parser or None) == service.reasoning_parser
    assert ns.generation_config == "auto"
    assert ns.override_generation_config == service.generation.as_dict()
    assert isinstance(ns.hf_overrides, dict)
    if _yarn(service):
        assert ns.hf_overrides["max_position_embeddings"] == service.max_model_len
        assert ns.hf_overrides["rope_parameters"]["rope_type"] == "yarn"
        assert ns.hf_overrides["rope_parameters"]["factor"] == service.yarn_factor
    else:
        assert ns.hf_overrides == {}
    assert ns.enforce_eager is service.enforce_eager

    engine = real_vllm.engine_args(ns)
    assert engine.served_model_name == [service.served_model_name]
    assert engine.kv_cache_dtype == service.kv_cache_dtype
    assert engine.override_generation_config == service.generation.as_dict()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_real_engine_config_accepts_the_plan(real_vllm: RealVllm, name: str) -> None:
    service = SERVICES[name]
    config = real_vllm.engine_config(vllm_args(service))
    model = config.model_config
    assert model.served_model_name == service.served_model_name
    assert model.max_model_len == service.max_model_len
    # On the CPU platform vLLM keeps the name given; on GPUs AWQ may become auto_awq.
    assert model.quantization == QUANTIZATION_FLAG[service.quantization]
    assert config.parallel_config.tensor_parallel_size == service.tensor_parallel_size
    cache = config.cache_config
    assert cache.gpu_memory_utilization == pytest.approx(service.gpu_memory_utilization, rel=1e-5)
    assert cache.cache_dtype == service.kv_cache_dtype
    assert config.scheduler_config.max_num_seqs == service.max_num_seqs
    assert config.scheduler_config.max_num_batched_tokens == service.max_num_batched_tokens
    # --generation-config auto + the override: the sampling defaults every request starts from.
    assert model.get_diff_sampling_param() == service.generation.as_dict()
    if service.reasoning_parser:
        assert config.structured_outputs_config.reasoning_parser == service.reasoning_parser
    if _yarn(service):
        hf = model.hf_config
        assert hf.max_position_embeddings == service.max_model_len
        assert hf.rope_parameters["rope_type"] == "yarn"
        assert hf.rope_parameters["factor"] == service.yarn_factor
        assert hf.rope_parameters["original_max_position_embeddings"] == 32768


@pytest.mark.parametrize("name", ["yarn-dense", "yarn-moe"])
def test_yarn_override_keeps_qwen3_rope_theta(real_vllm: RealVllm, name: str) -> None:
    config = real_vllm.engine_config(vllm_args(SERVICES[name]))
    assert config.model_config.hf_config.rope_parameters.get("rope_theta") == QWEN3_ROPE_THETA


def _base_args() -> list[str]:
    return list(vllm_args(SERVICES["single-gpu/mini"]))


def _with(flag: str, value: str) -> list[str]:
    """The single-gpu command with FLAG's value replaced (or FLAG added)."""
    args = _base_args()
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return [*args, flag, value]


# (name, arguments, how `vllm serve` of the pinned release ends, what its error says)
BAD_COMMANDS: list[tuple[str, list[str], str, str]] = [
    ("unknown-flag", [*_base_args(), "--no-such-flag", "1"], "exit 2", ""),
    ("removed-enable-reasoning", [*_base_args(), "--enable-reasoning"], "exit 2", ""),
    ("removed-rope-scaling", _with("--rope-scaling", '{"rope_type":"yarn"}'), "exit 2", ""),
    ("utilization-above-1", _with("--gpu-memory-utilization", "1.5"), "exit 1",
     "Input should be less than or equal to 1"),
    ("utilization-zero", _with("--gpu-memory-utilization", "0"), "exit 1",
     "Input should be greater than 0"),
    ("bad-kv-cache-dtype", _with("--kv-cache-dtype", "fp9"), "exit 1", "fp9"),
    # --quantization has no argparse choices: the checkpoint's config decides.
    ("bad-quantization", _with("--quantization", "awq4"), "exit 1", "does not match"),
    ("tp-not-a-number", _with("--tensor-parallel-size", "two"), "exit 2", ""),
    ("bad-json-override", _with("--override-generation-config", "{temperature: 0.6"), "exit 2",
     ""),
    ("context-beyond-config", _with("--max-model-len", "131072"), "exit 1",
     "greater than the derived max_model_len"),
    ("quantization-mismatch", _with("--quantization", "fp8"), "exit 1", "does not match"),
    ("tp-not-dividing-heads", _with("--tensor-parallel-size", "3"), "exit 1",
     "must be divisible by tensor parallel size"),
    ("unknown-reasoning-parser", _with("--reasoning-parser", "qwen9"), "exit 1", "qwen9"),
]  # fmt: skip
BAD_IDS = [n for n, *_ in BAD_COMMANDS]

# Where the CPU build (older than the pin) ends differently; the stand-in follows the pin.
BEFORE_PIN: dict[str, str] = {
    # Up to 0.32 cache_dtype was a Literal, so argparse had choices; 0.33 made it
    # `CacheDType | str` with a pydantic validator (custom KV dtypes can be registered).
    "bad-kv-cache-dtype": "exit 2",
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3])


def _expected_from_real(name: str, pinned: str) -> str:
    import vllm

    if _version(vllm.__version__) < _version(VLLM_VERSION):
        return BEFORE_PIN.get(name, pinned)
    return pinned


def test_real_parser_exits_2_on_an_unknown_flag(
    real_vllm: RealVllm, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        real_vllm.parse([*_base_args(), "--no-such-flag", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("name, argv, pinned, says", BAD_COMMANDS, ids=BAD_IDS)
def test_real_vllm_rejects_bad_commands(
    real_vllm: RealVllm, name: str, argv: list[str], pinned: str, says: str
) -> None:
    code, why = real_vllm.outcome(argv)
    assert code == _expected_from_real(name, pinned), why
    if code == "exit 1":  # argparse's own usage errors (exit 2) were checked by code alone
        assert says in why


@pytest.mark.parametrize(
    "name, argv, pinned",
    [(n, list(vllm_args(s)), "ok") for n, s in sorted(SERVICES.items())]
    + [(n, a, p) for n, a, p, _ in BAD_COMMANDS],
    ids=sorted(SERVICES) + BAD_IDS,
)
def test_standin_and_real_vllm_agree_on_acceptance(
    real_vllm: RealVllm,
    standin_outcome: Callable[[list[str]], str],
    name: str,
    argv: list[str],
    pinned: str,
) -> None:
    real, why = real_vllm.outcome(argv)
    if real != _expected_from_real(name, pinned):
        pytest.fail(f"real vLLM ended with {real} ({why}); see the tests above")
    # The stand-in imitates the pinned release, which may differ from the CPU build here.
    assert standin_outcome(argv) == pinned


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_standin_parses_rendered_args_like_vllm(
    real_vllm: RealVllm, standin_outcome: Callable[[list[str]], str], name: str
) -> None:
    from deployer.standin.cli_args import parse_serve_args

    argv = list(vllm_args(SERVICES[name]))
    real = vars(real_vllm.parse(argv))
    standin, _warnings = parse_serve_args(argv)
    fields = (
        "model",
        "model_tag",
        "served_model_name",
        "host",
        "port",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "kv_cache_dtype",
        "quantization",
        "reasoning_parser",
        "generation_config",
        "override_generation_config",
        "hf_overrides",
        "enforce_eager",
    )
    got = {f: getattr(standin, f) for f in fields}
    want = {f: real[f] for f in fields}
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
