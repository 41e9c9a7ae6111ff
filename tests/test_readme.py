"""The README is the user's manual: its commands and settings table must match what the code does."""
from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _fmt(value: object) -> str:
    return "unset" if value is None else ("`[]`" if value == [] else f"`{value}`")


def test_settings_table_lists_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(SNE_[A-Z_]+)` \| ([^|]+) \|", README, flags=re.M))
    expected = {f"SNE_{n.upper()}": _fmt(f.get_default(call_default_factory=True)) for n, f in Settings.model_fields.items()}
    assert set(rows) == set(expected), f"README settings table out of date: {set(rows) ^ set(expected)}"
    for var, default in expected.items():
        assert rows[var].strip() == default, f"{var}: README says {rows[var].strip()}, code says {default}"


def test_ci_runs_the_readme_test_command() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    test_cmd = next(line.split("#")[0].strip() for line in first_block.splitlines() if "pytest" in line)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci], f"{test_cmd!r} is not a line of .ci/run"
    assert "sne serve" in first_block and "pip install -e" in first_block


def test_every_cli_command_is_documented() -> None:
    from app.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == {"inspect", "encode", "zoo", "train", "eval", "calibrate", "serve", "gate"}
    for name in names:
        assert f"`sne {name}" in README, name


def test_contributing_layout_matches_the_tree():
    """CONTRIBUTING.md's layout names every module of app/ and model/, and names no module that does not exist."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    modules = {p for pkg in ("app", "model") for p in (ROOT / pkg).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    missing = sorted(str(p.relative_to(ROOT)) for p in modules if p.name not in block)
    assert not missing, f"modules missing from CONTRIBUTING.md's layout: {missing}"
    existing = {p.name for d in ("app", "model", "benchmarks", "examples", "tests") for p in (ROOT / d).rglob("*.py")}
    named = set(re.findall(r"[\w]+\.py", block))
    assert named <= existing, f"CONTRIBUTING.md names modules that do not exist: {sorted(named - existing)}"
