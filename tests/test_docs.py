"""The README and the example config say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import llmvigil
import pytest
from anthropic_server import AnthropicServer, Script
from llmvigil.adapters.local import LocalStore

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


@pytest.mark.parametrize("block", _blocks("yaml"))
def test_readme_yaml_is_a_valid_config(block: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    path = tmp_path / "vigil.yaml"
    path.write_text(block + f"pipeline: {{journal_dir: {tmp_path}/j}}\n"
                    f"store: {{path: {tmp_path}/s.db}}\n")
    llmvigil.init(str(path))


def test_readme_instrumentation_example_runs(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (example,) = [b for b in _blocks("python") if "llmvigil.instrument" in b]
    store = tmp_path / "vigil.db"
    (tmp_path / "vigil.yaml").write_text(
        f"store: {{path: {store}}}\npipeline: {{journal_dir: {tmp_path}/j}}\n")
    with AnthropicServer(Script(chunks=["03/04/2024", ", 17/04/2024"])) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-readme")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        namespace = {"my_streaming_model": lambda q: iter(["a", "b"])}
        exec(compile(example, "README.md", "exec"), namespace)
        namespace["stream_answer"]("q")  # defined but not called in the example
        list(namespace["stream_answer"]("q"))
        llmvigil.shutdown()
    s = LocalStore(store)
    spans = {sp.name: sp for sp in s.read("spans")}
    scores = list(s.read("scores"))
    events = list(s.read("session_events"))
    s.close()
    llm = spans["anthropic.messages.create"]
    assert llm.parent_id == spans["extract"].id
    assert spans["extract"].parent_id == spans["request"].id
    assert llm.feature == "extract_dates" and llm.session_id == "s-42"
    assert llm.usage is not None and llm.usage.input_tokens == 25
    assert spans["extract"].user_id == "u-7"
    assert spans["stream_answer"].stream is not None
    assert [sc.kind for sc in scores] == ["thumbs_down"]
    assert scores[0].span_id == spans["request"].id
    assert [e.event for e in events] == ["task_complete"]


def test_example_config_loads_and_names_every_section() -> None:
    from llmvigil.core.config import VigilConfig, load_config

    cfg = load_config(ROOT / "config.example.yaml")
    text = (ROOT / "config.example.yaml").read_text()
    for section in VigilConfig.model_fields:
        if section != "source":
            assert re.search(rf"^{section}:", text, re.M), section
    assert [b.name for b in cfg.backends] == ["local"]


def test_readme_capability_table_is_generated_from_the_adapters() -> None:
    import subprocess
    import sys

    table = subprocess.run([sys.executable, "-m", "llmvigil.core.cli", "backends",
                            "--markdown"], capture_output=True, text=True, check=True).stdout
    start, end = "<!-- capabilities:start -->\n", "\n<!-- capabilities:end"
    documented = README.split(start)[1].split(end)[0]
    assert documented == table.strip(), "run `vigil backends --markdown` and paste it into README"


def test_example_config_commented_monitor_and_alert_blocks_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncommenting the `monitors:` and `alerts:` examples gives a valid config."""
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    lines, in_block = [], False
    for line in (ROOT / "config.example.yaml").read_text().splitlines():
        if line in ("monitors: {}", "alerts: {}"):
            lines.append(line.replace(" {}", ""))
            in_block = True
        elif in_block and line.startswith("#  "):
            lines.append(line[1:])
        else:
            in_block = in_block and not line.strip()
            lines.append(line)
    text = "\n".join(lines)
    assert "  cost:" in text and "  rules:" in text
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    cfg = llmvigil.init(str(path), pipeline={"journal_dir": str(tmp_path / "j")},
                        store={"path": str(tmp_path / "s.db")}).config
    assert cfg.monitors["cost"]["budgets"]["global_usd_per_day"] == 200
    assert cfg.alerts["rules"][0]["name"] == "unhappy-users"
