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


def test_local_links_in_the_docs_point_at_files_that_exist():
    """README, CONTRIBUTING and docs/ link to each other's files (the experiment history moved to docs/): a moved
    or renamed file must not leave a dead link; `#anchor` links within the README name an anchor it has."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 4, "docs/ holds the predictor and benchmark histories"
    anchors = set(re.findall(r'<a id="([\w-]+)"', README)) | {
        re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", README, flags=re.M)
    }
    dead = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            if path and not (page.parent / path).exists():
                dead.append(f"{page.name}: {target}")
            elif not path and page.name == "README.md" and anchor not in anchors:
                dead.append(f"{page.name}: {target}")
    assert not dead, f"dead links: {dead}"
