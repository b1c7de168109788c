"""The SQL stores' in-memory tails of chats (tails.py): what proves one current, what it answers."""

from chatkeep.domain import Message, Role, utcnow
from chatkeep.store.sql.recent import Tails

OWNER = "alice"
CHAT = "chat_1"


def messages(*seqs: int) -> list[Message]:
    return [Message(f"msg_{seq}", CHAT, seq, Role.USER, f"m{seq}", utcnow()) for seq in seqs]


def seqs(found: list[Message] | None) -> list[int] | None:
    return None if found is None else [message.seq for message in found]


def newest(tails: Tails, *, ticket: int | None, limit: int = 10, before_seq: int | None = None) -> list[int] | None:
    return seqs(tails.newest(OWNER, CHAT, ticket=ticket, limit=limit, before_seq=before_seq, after_seq=0))


def test_only_the_ticket_whose_appends_proved_a_tail_reads_it() -> None:
    tails = Tails()
    tails.appended(OWNER, CHAT, messages(1), revision=0, ticket=7)
    assert newest(tails, ticket=7) == [1]
    assert newest(tails, ticket=8) is None
    assert newest(tails, ticket=None) is None
    assert tails.newest("mallory", CHAT, ticket=7, limit=10, before_seq=None, after_seq=0) is None
    tails.appended(OWNER, CHAT, messages(2), revision=0, ticket=8)  # the next turn runs on from it
    assert newest(tails, ticket=8) == [2, 1]
    assert newest(tails, ticket=7) is None


def test_a_tail_starts_over_when_the_chat_moved_on_elsewhere() -> None:
    tails = Tails()
    tails.appended(OWNER, CHAT, messages(1, 2), revision=0, ticket=1)
    tails.appended(OWNER, CHAT, messages(5), revision=0, ticket=2)  # 3 and 4 came from another process
    assert newest(tails, ticket=2, limit=1) == [5]
    assert newest(tails, ticket=2) is None  # 4 and below must be read
    tails.read_older(OWNER, CHAT, 2, messages(5, 4, 3, 2, 1))
    assert newest(tails, ticket=2) == [5, 4, 3, 2, 1]
    tails.appended(OWNER, CHAT, messages(6), revision=1, ticket=3)  # a message changed meanwhile
    assert newest(tails, ticket=3) is None
    assert newest(tails, ticket=3, limit=1) == [6]


def test_a_tail_keeps_its_newest_messages_and_every_tail_its_bound() -> None:
    tails = Tails(max_messages=3, max_chars=10)
    tails.appended(OWNER, CHAT, messages(1, 2, 3, 4), revision=0, ticket=1)
    assert newest(tails, ticket=1, limit=3) == [4, 3, 2]
    assert newest(tails, ticket=1, limit=4) is None
    assert newest(tails, ticket=1, limit=2, before_seq=4) == [3, 2]
    other = Message("msg_x", "chat_2", 1, Role.USER, "x" * 9, utcnow())
    tails.appended(OWNER, "chat_2", [other], revision=0, ticket=2)  # over max_chars: the older chat goes
    assert newest(tails, ticket=1) is None
    assert seqs(tails.newest(OWNER, "chat_2", ticket=2, limit=5, before_seq=None, after_seq=0)) == [1]
