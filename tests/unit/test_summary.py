"""Reading the summary out of what a model answered (parse_summary)."""

import pytest

from chatkeep.errors import LLMBadResponseError
from chatkeep.summaries.summarizer import parse_summary


def test_parse_summary_tolerates_prose_and_fences_around_the_json() -> None:
    answer = 'Here you go:\n```json\n{"summary": " Short. ", "highlights": ["a", "", 3, "b"]}\n```'
    assert parse_summary(answer) == ("Short.", ["a", "b"])


@pytest.mark.parametrize("answer", ["no json here", '{"summary": ""}', '{"highlights": ["x"]}', "{broken"])
def test_parse_summary_refuses_unusable_answers(answer: str) -> None:
    with pytest.raises(LLMBadResponseError):
        parse_summary(answer)
