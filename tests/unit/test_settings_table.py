"""docs/configuration.md's table is the one the settings models generate."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from arc_common import settings_table
from arc_common.settings import ServiceSettings

README = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_has_a_description() -> None:
    missing = [row.variable for row in settings_table.rows() if not row.description]
    assert missing == [], (
        "give these settings Field(description=...) or an entry in "
        f"arc_common.settings_table.FALLBACK: {missing}"
    )


def test_no_fallback_describes_a_setting_that_is_gone() -> None:
    variables = {row.variable for row in settings_table.rows()}
    assert sorted(set(settings_table.FALLBACK) - variables) == []


def test_every_service_is_in_the_table() -> None:
    services = [name for name, _ in settings_table.service_models()]
    assert services[:4] == ["scheduler", "gpu_manager", "governance", "executor"]
    variables = {row.variable for row in settings_table.rows()}
    for name, model in settings_table.service_models():
        prefix = str(model.model_config.get("env_prefix"))
        assert prefix == f"ARC_{name.upper()}_"
        own = set(model.model_fields) - set(ServiceSettings.model_fields)
        assert {f"{prefix}{field.upper()}" for field in own} <= variables


def test_the_readme_holds_the_generated_table() -> None:
    text = README.read_text()
    assert settings_table.between_markers(text) == settings_table.table(), (
        "the settings table in docs/configuration.md is stale: run "
        "`python -m arc_common.settings_table --write docs/configuration.md`"
    )


def test_a_field_description_wins_over_the_fallback() -> None:
    class Demo(ServiceSettings):
        model_config = SettingsConfigDict(
            env_prefix="ARC_DEMO_", extra="forbid", frozen=True, populate_by_name=True
        )
        shiny: int = Field(default=3, description="from the field")
        plain: float = 2.0

    fields = Demo.model_fields
    shiny = settings_table._row("ARC_DEMO_SHINY", "shiny", fields["shiny"])
    plain = settings_table._row("ARC_DEMO_PLAIN", "plain", fields["plain"])
    assert (shiny.default, shiny.description) == ("3", "from the field")
    assert (plain.default, plain.description) == ("2", "")
    assert settings_table.env_name(Demo, "plain", fields["plain"]) == "ARC_DEMO_PLAIN"


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    target = tmp_path / "README.md"
    begin, end = settings_table.BEGIN, settings_table.END
    target.write_text(f"before\n{begin}\n| old |\n{end}\nafter\n")
    assert settings_table.main(["--write", str(target)]) == 0
    text = target.read_text()
    assert text.startswith(f"before\n{begin}\n| variable |")
    assert text.endswith(f"|\n{end}\nafter\n")
    assert settings_table.between_markers(text) == settings_table.table()


def test_markers_are_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="markers"):
        settings_table.replace_between_markers("no table here", "| x |")
