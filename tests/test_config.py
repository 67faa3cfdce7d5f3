"""Tests of llmvigil.core.config: layering, interpolation, errors with file:line, secrets."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from llmvigil.core.config import BackendConfig, VigilConfig, load_config
from llmvigil.core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PLANTED = "sk-test-PLANTED-123"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No VIGIL_* variables leak in from the outside; run in an empty directory."""
    for name in list(os.environ):
        if name.upper().startswith("VIGIL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "vigil.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# -- defaults and discovery ---------------------------------------------------------


def test_defaults_without_any_file() -> None:
    cfg = load_config()
    assert cfg.source is None
    assert cfg.service.name == "llm-app" and cfg.service.environment is None
    assert [b.name for b in cfg.backends] == ["local"]
    assert cfg.backends[0].redaction is None and cfg.backends[0].timeout_s == 10.0
    assert cfg.capture.redact == ["api_key", "credit_card", "email"]
    assert "x-api-key" in cfg.capture.redact_keys
    assert cfg.pipeline.queue_size == 100_000
    assert cfg.pipeline.journal_max_bytes == 1 << 30
    assert cfg.pipeline.on_full == "drop"
    assert cfg.store.path == ".vigil/vigil.db"
    assert cfg.monitors == {} and cfg.alerts == {}
    assert cfg == VigilConfig()


def test_discovers_vigil_yaml_in_cwd(tmp_path: Path) -> None:
    write(tmp_path, "service:\n  name: from-cwd\n")
    cfg = load_config()
    assert cfg.service.name == "from-cwd"
    assert cfg.source == "vigil.yaml"


def test_vigil_config_env_var_wins_over_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "service:\n  name: from-cwd\n")
    other = write(tmp_path, "service:\n  name: from-env\n", name="other.yaml")
    monkeypatch.setenv("VIGIL_CONFIG", str(other))
    cfg = load_config()
    assert cfg.service.name == "from-env"
    assert cfg.source == str(other)


def test_vigil_config_pointing_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_CONFIG", "/nowhere/vigil.yaml")
    msg = error_of()
    assert "VIGIL_CONFIG" in msg and "/nowhere/vigil.yaml" in msg and "not found" in msg


def test_empty_file_and_null_sections_give_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).backends[0].name == "local"
    cfg = load_config(write(tmp_path, "capture:\nmonitors:\n", name="b.yaml"))
    assert cfg.capture.inputs is True and cfg.monitors == {}


# -- backends -----------------------------------------------------------------------


def test_bare_and_mapping_backend_entries(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends:
          - local
          - name: phoenix
            endpoint: http://127.0.0.1:6006
            project: demo
            redaction: none
            timeout_s: 2.5
          - name: console
            enabled: false
    """)
    local, phoenix, console = load_config(path).backends
    assert local == BackendConfig(name="local") and local.settings == {}
    assert phoenix.redaction == "none" and phoenix.timeout_s == 2.5
    assert phoenix.settings == {"endpoint": "http://127.0.0.1:6006", "project": "demo"}
    assert console.enabled is False


def test_empty_backend_list_is_allowed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "backends: []\n")).backends == []


def test_duplicate_backend_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends:
          - local
          - console
          - name: local
            path: other.db
    """)
    msg = error_of(path)
    assert "vigil.yaml:4: backends[2]" in msg
    assert "duplicate backend name 'local'" in msg
    assert "vigil.yaml:2" in msg


# -- layering -----------------------------------------------------------------------


def test_env_nested_override_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, """
        pipeline:
          queue_size: 50
          batch_size: 7
        backends: [local]
    """)
    monkeypatch.setenv("VIGIL_PIPELINE__QUEUE_SIZE", "10")
    monkeypatch.setenv("VIGIL_BACKENDS", '["local", "console"]')
    monkeypatch.setenv("VIGIL_CAPTURE__REDACT", '["email"]')
    monkeypatch.setenv("VIGIL_CAPTURE__INPUTS", "false")
    cfg = load_config(path)
    assert cfg.pipeline.queue_size == 10
    assert cfg.pipeline.batch_size == 7  # the rest of the section still comes from the file
    assert [b.name for b in cfg.backends] == ["local", "console"]
    assert cfg.capture.redact == ["email"] and cfg.capture.inputs is False


def test_keyword_overrides_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "capture:\n  outputs: false\n  max_depth: 3\n")
    monkeypatch.setenv("VIGIL_CAPTURE__MAX_DEPTH", "4")
    monkeypatch.setenv("VIGIL_BACKENDS", '["console"]')
    cfg = load_config(path, backends=["memory"], capture={"max_depth": 5})
    assert [b.name for b in cfg.backends] == ["memory"]
    assert cfg.capture.max_depth == 5
    assert cfg.capture.outputs is False  # deep merge keeps the file's other keys


def test_keyword_override_errors_name_the_keyword() -> None:
    msg = error_of(None, pipeline={"queue_size": 0})
    assert "load_config(pipeline=...)" in msg and "pipeline.queue_size" in msg
    assert "unknown key" in error_of(None, colour="red")


def test_env_error_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "pipeline:\n  queue_size: 50\n")
    monkeypatch.setenv("VIGIL_PIPELINE__QUEUE_SIZE", "lots")
    msg = error_of(path)
    assert "VIGIL_PIPELINE__QUEUE_SIZE" in msg
    assert "pipeline.queue_size: expected a positive integer, got 'lots'" in msg
    assert "vigil.yaml" not in msg


def test_env_list_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_BACKENDS", "local,console")
    msg = error_of()
    assert "VIGIL_BACKENDS" in msg and "expected a list" in msg


# -- interpolation ------------------------------------------------------------------


def test_interpolation_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_NAME", "shop")
    monkeypatch.setenv("QSIZE", "64")
    monkeypatch.delenv("UNSET_HOST", raising=False)
    path = write(tmp_path, """
        service:
          name: ${APP_NAME}-bot
          release: "${UNSET_HOST:-v1}"
        pipeline:
          queue_size: ${QSIZE}
        backends:
          - name: otlp
            endpoint: http://${UNSET_HOST:-localhost}:4318
            literal: $${NOT_INTERPOLATED}
    """)
    cfg = load_config(path)
    assert cfg.service.name == "shop-bot" and cfg.service.release == "v1"
    assert cfg.pipeline.queue_size == 64
    assert cfg.backends[0].settings["endpoint"] == "http://localhost:4318"
    assert cfg.backends[0].settings["literal"] == "${NOT_INTERPOLATED}"


def test_missing_variable_names_file_line_key_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VIGIL_TEST_MISSING", raising=False)
    path = write(tmp_path, """
        service:
          name: app
        backends:
          - name: langsmith
            api_key: ${VIGIL_TEST_MISSING}
    """)
    msg = error_of(path)
    assert "vigil.yaml:5: backends[0].api_key" in msg
    assert "VIGIL_TEST_MISSING" in msg and "not set" in msg


# -- error messages -----------------------------------------------------------------


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, """
        service:
          name: app
        pipeline:
          batch_size: 10
          queue_size: lots
    """)
    msg = error_of(path)
    assert msg == (
        f"{path}:5: pipeline.queue_size: expected a positive integer, got 'lots'"
    )


def test_unknown_keys_with_their_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        service:
          name: app
        pipline:
          queue_size: 5
        capture:
          imputs: false
    """)
    lines = error_of(path).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:3: pipline: unknown key (did you mean 'pipeline'?)")
    assert lines[1].startswith(f"{path}:6: capture.imputs: unknown key (did you mean 'inputs'?)")
    assert "valid keys: inputs, outputs" in lines[1]


def test_unknown_keys_allowed_in_backends_monitors_alerts(tmp_path: Path) -> None:
    path = write(tmp_path, """
        backends:
          - name: wandb
            mode: offline
        monitors:
          drift: {window: 500}
        alerts:
          slack: {channel: "#ops"}
    """)
    cfg = load_config(path)
    assert cfg.backends[0].settings == {"mode": "offline"}
    assert cfg.monitors == {"drift": {"window": 500}}
    assert cfg.alerts == {"slack": {"channel": "#ops"}}


def test_bad_regex_names_the_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, """
        capture:
          redact_patterns:
            - name: employee_id
              replacement: "[EMP]"
              pattern: "EMP-(\\\\d+"
    """)
    msg = error_of(path)
    assert f"{path}:5: capture.redact_patterns[0].pattern:" in msg
    assert "regular expression" in msg and "'employee_id'" in msg


def test_good_regex_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, """
        capture:
          redact_patterns:
            - {name: emp, pattern: "EMP-[0-9]{6}"}
    """)
    (pattern,) = load_config(path).capture.redact_patterns
    assert pattern.pattern == "EMP-[0-9]{6}" and pattern.replacement == "[REDACTED]"


def test_unknown_redact_category_lists_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "capture:\n  redact:\n    - email\n    - ssn\n")
    msg = error_of(path)
    assert f"{path}:4: capture.redact[1]:" in msg and "got 'ssn'" in msg
    for name in ("api_key", "credit_card", "email", "phone", "iban", "ip_address"):
        assert name in msg


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pipeline.batch_size", "-5", "expected a positive integer, got -5"),
        ("pipeline.flush_interval_s", "0", "expected a positive number, got 0"),
        ("capture.sample_rate", "1.5", "expected a number between 0 and 1, got 1.5"),
        ("pipeline.max_retries", "-1", "expected an integer >= 0, got -1"),
        ("pipeline.on_full", "block", "expected 'drop' or 'spill', got 'block'"),
        ("capture.inputs", "maybe", "expected true or false, got 'maybe'"),
        ("pipeline.journal_max_bytes", "lots", "expected a positive size in bytes"),
    ],
)
def test_invalid_values(tmp_path: Path, key: str, value: str, expected: str) -> None:
    section, name = key.split(".")
    path = write(tmp_path, f"service:\n  name: x\n{section}:\n  {name}: {value}\n")
    assert error_of(path).startswith(f"{path}:4: {key}: {expected}")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500MB", 500_000_000), ("1GiB", 1 << 30), ("10k", 10_000), ("2 MiB", 2 << 20),
        ("123", 123), ("1.0e+6", 1_000_000),
    ],
)
def test_journal_sizes(tmp_path: Path, text: str, size: int) -> None:
    path = write(tmp_path, f"pipeline:\n  journal_max_bytes: {text}\n")
    assert load_config(path).pipeline.journal_max_bytes == size


def test_several_errors_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        pipeline:
          queue_size: 0
          batch_size: many
        store:
          path: 3.5
          colour: red
    """)
    lines = error_of(path).splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:2", "pipeline.queue_size"],
        [f"{path}:3", "pipeline.batch_size"],
        [f"{path}:6", "store.colour"],
    ]


def test_bad_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "service:\n  name: app\n  release: [1, 2\npipeline: {}\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}:4:") and "invalid YAML" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "- local\n- console\n"))
    assert "vigil.yaml:1" in msg and "top level must be a mapping" in msg and "got a list" in msg


def test_missing_file(tmp_path: Path) -> None:
    msg = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg


def test_source_is_not_a_config_key(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "source: elsewhere.yaml\n"))
    assert "vigil.yaml:1: source: unknown key" in msg


def test_missing_backend_name(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "backends:\n  - local\n  - endpoint: http://x\n"))
    assert "vigil.yaml:3: backends[1].name: required key is missing" in msg


# -- secrets ------------------------------------------------------------------------


def test_secrets_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LS_KEY", PLANTED)
    path = write(tmp_path, """
        backends:
          - name: langsmith
            api_key: ${LS_KEY}
            project: demo
            headers:
              Authorization: Bearer PLANTED-bearer
          - name: langfuse
            secret_key: sk-test-PLANTED-456
            public_key: pk-1
    """)
    cfg = load_config(path)
    dumped = [repr(cfg), str(cfg), str(cfg.model_dump()), cfg.model_dump_json(),
              str(cfg.redacted_dict()), repr(cfg.backends[0])]
    for text in dumped:
        assert "PLANTED" not in text
    langsmith, langfuse = cfg.backends
    assert langsmith.settings == {
        "api_key": PLANTED, "project": "demo",
        "headers": {"Authorization": "Bearer PLANTED-bearer"},
    }
    assert langfuse.settings["secret_key"] == "sk-test-PLANTED-456"
    shown = cfg.redacted_dict()["backends"]
    assert shown[0]["api_key"] == "***" and shown[0]["project"] == "demo"
    assert shown[0]["headers"] == {"Authorization": "***"}


def test_redacted_dict_masks_secret_keys_in_free_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "alerts:\n  slack:\n    token: PLANTED-token\n    channel: ops\n")
    shown = load_config(path).redacted_dict()
    assert shown["alerts"] == {"slack": {"token": "***", "channel": "ops"}}
    assert shown["capture"]["redact_keys"][0] == "api_key"  # not a secret, a key name


def test_secrets_never_in_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        # an invalid entry whose secret is in the same mapping
        f"backends:\n  - api_key: {PLANTED}\n    timeout_s: never\n",
        # a secret in the wrong place (unknown key)
        f"service:\n  api_key: {PLANTED}\n",
        # a secret-named value of the wrong type where a secret is not expected
        f"capture:\n  redact_keys: {PLANTED}\n",
        # a whole invalid backend item
        f"backends:\n  - [{PLANTED}]\n",
        # YAML syntax error on the secret's line
        f"backends:\n  - name: x\n    api_key: {PLANTED}: oops\n",
    ]
    for i, text in enumerate(cases):
        msg = error_of(write(tmp_path, text, name=f"s{i}.yaml"))
        assert f"s{i}.yaml:" in msg
        assert "PLANTED" not in msg, msg
    entry = f'{{"name": "x", "timeout_s": "soon", "token": "{PLANTED}"}}'
    monkeypatch.setenv("VIGIL_BACKENDS", f"[{entry}]")
    msg = error_of()
    assert "VIGIL_BACKENDS" in msg and "PLANTED" not in msg


def test_secret_setting_holds_plain_value_after_roundtrip() -> None:
    backend = BackendConfig.model_validate({"name": "helicone", "api_key": PLANTED})
    again = BackendConfig.model_validate(backend.model_dump())
    assert again.settings["api_key"] == PLANTED
    cfg = load_config(None, backends=[backend])
    assert cfg.backends[0].settings["api_key"] == PLANTED


# -- the example --------------------------------------------------------------------


def test_example_config_loads_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGSMITH_API_KEY", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY",
                 "LANGFUSE_HOST", "HELICONE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    example = REPO / "config.example.yaml"
    cfg = load_config(example)
    assert cfg.source == str(example)
    assert [b.name for b in cfg.backends] == ["local"]
    assert cfg.model_dump(exclude={"source"}) == VigilConfig().model_dump(exclude={"source"})


def test_example_lists_every_option() -> None:
    text = (REPO / "config.example.yaml").read_text(encoding="utf-8")
    for section in ("service", "capture", "pipeline", "store"):
        model = VigilConfig.model_fields[section].annotation
        assert model is not None
        for key in model.model_fields:  # type: ignore[union-attr]
            assert f"{key}:" in text, f"{section}.{key} missing from config.example.yaml"
    for vendor in ("langsmith", "langfuse", "phoenix", "helicone", "wandb", "otlp", "console"):
        assert f"# - name: {vendor}" in text
