"""The `vigil` command line, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "app.py"


def vigil(*args: str, cwd: Path,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmvigil.core.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_example_app_then_report_and_status(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(EXAMPLE), "--requests", "60", "--speed", "0.05"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "llmvigil report" in run.stdout and "extract_dates" in run.stdout
    report = vigil("report", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["totals"]["requests"] == 60
    assert set(data["features"]) == {"extract_dates", "summarise", "classify"}
    assert sum(f["requests"] for f in data["features"].values()) == 60
    assert data["totals"]["ttft_mean_s"] > 0
    status = vigil("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    procs = json.loads(status.stdout)["processes"]
    assert procs and procs[0]["backends"]["local"]["dropped"] == 0
    assert procs[0]["backends"]["local"]["delivered"] >= 60
    human = vigil("status", cwd=tmp_path)
    assert "delivered" in human.stdout and "local" in human.stdout


def test_report_since_and_bad_since(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLE), "--requests", "10", "--speed", "0.05"],
                   cwd=tmp_path, capture_output=True, check=True, timeout=300)
    recent = json.loads(vigil("report", "--json", "--since", "1h", cwd=tmp_path).stdout)
    assert recent["totals"]["requests"] == 10
    bad = vigil("report", "--since", "yesterday-ish", cwd=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr and "15m" in bad.stderr


def test_report_without_store_says_so(tmp_path: Path) -> None:
    result = vigil("report", cwd=tmp_path)
    assert result.returncode == 1 and "no records yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_good_bad_and_unknown_backend(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("backends: [local, console]\n")
    ok = vigil("config", "check", str(good), cwd=tmp_path)
    assert ok.returncode == 0 and "local, console" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        backends:
          - local
        pipeline:
          queue_size: lots
    """))
    result = vigil("config", "check", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.yaml:4" in result.stderr and "pipeline.queue_size" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("backends: [langsmyth]\n")
    result = vigil("config", "check", str(unknown), cwd=tmp_path)
    assert result.returncode == 2 and "langsmyth" in result.stderr and "local" in result.stderr


def test_config_check_show_hides_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("backends:\n  - name: console\n    api_key: sk-ant-PLANTED-0000000000000000\n")
    result = vigil("config", "check", "--show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "PLANTED" not in result.stdout and "***" in result.stdout


def test_backends_lists_capabilities_and_checks(tmp_path: Path) -> None:
    listing = vigil("backends", cwd=tmp_path)
    assert listing.returncode == 0
    for name in ("local", "console", "memory"):
        assert name in listing.stdout
    (tmp_path / "vigil.yaml").write_text("backends: [local]\n")
    checked = vigil("backends", "--check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "✓ local: SQLite store .vigil/vigil.db: not created yet" in checked.stdout
    assert not (tmp_path / ".vigil").exists(), "a check creates nothing"
    from llmvigil.adapters.local import LocalStore

    (tmp_path / ".vigil").mkdir()
    LocalStore(tmp_path / ".vigil" / "vigil.db").close()
    (tmp_path / "vigil.yaml").write_text("backends: [{name: local, writer: process}]\n")
    checked = vigil("backends", "--check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "✓ local: SQLite store .vigil/vigil.db: 0 spans" in checked.stdout


def test_init_writes_example_config_once(tmp_path: Path) -> None:
    first = vigil("init", cwd=tmp_path)
    assert first.returncode == 0 and (tmp_path / "vigil.yaml").exists()
    again = vigil("init", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    assert vigil("config", "check", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args", [["report", "--bogus"], ["nope"]])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = vigil(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_example_app_rejects_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--requests", "0"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--requests" in result.stderr
