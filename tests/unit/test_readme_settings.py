"""The README's Configuration section names every setting, so a new one cannot go undocumented."""

from pathlib import Path

from chatkeep.cli.serve import env_of
from chatkeep.config import Settings

README = Path(__file__).parents[2] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_configuration_section_names_every_setting() -> None:
    section = _section("Configuration")
    missing = [env_of(name) for name in Settings.model_fields if f"`{env_of(name)}`" not in section]
    assert not missing, f"README's Configuration section does not name {missing}"
