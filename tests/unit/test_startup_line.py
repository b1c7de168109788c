"""The line `chatkeep serve` writes on stderr as it starts: what it serves from and talks to."""

from chatkeep import __version__
from chatkeep.cli.serve import startup_line
from chatkeep.config import Settings


def test_it_names_the_store_the_provider_the_upstream_and_the_model() -> None:
    settings = Settings(openai_base_url="http://127.0.0.1:11434/v1", llm_model="llama3.2", store="sqlite:///c.db")
    assert startup_line(settings) == (
        f"chatkeep {__version__}: store sqlite:///c.db, LLM openai (llama3.2 at http://127.0.0.1:11434/v1)"
    )


def test_it_hides_credentials_in_the_urls() -> None:
    settings = Settings(
        openai_base_url="https://bob:s3cret@llm.example:8443/v1",
        store="postgresql://app:pa55@db.example/chats",
        llm_model="m",
    )
    line = startup_line(settings)
    assert "s3cret" not in line
    assert "pa55" not in line
    assert "LLM openai (m at https://***@llm.example:8443/v1)" in line
    assert "store postgresql://app:***@db.example/chats" in line
    assert "bob" not in startup_line(
        Settings(openai_base_url="https://bob@llm.example/v1")
    )  # a user alone can be a key


def test_offline_it_says_so_and_how_to_connect_a_model() -> None:
    line = startup_line(Settings())
    assert line.startswith(f"chatkeep {__version__}: store memory://, LLM offline")
    assert "no model connected" in line
    assert "OPENAI_BASE_URL" in line
    assert "OPENAI_API_KEY" in line
    assert "\n" not in line
