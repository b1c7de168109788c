"""The newest messages the SQL stores keep of chats (sql/recent.py): what proves them current, what they answer."""

from chatkeep.domain import Message, Role, utcnow
from chatkeep.store.sql.recent import RecentMessages

OWNER = "alice"
CHAT = "chat_1"


def messages(*seqs: int) -> list[Message]:
    return [Message(f"msg_{seq}", CHAT, seq, Role.USER, f"m{seq}", utcnow()) for seq in seqs]


def seqs(found: list[Message] | None) -> list[int] | None:
    return None if found is None else [message.seq for message in found]


def newest(
    recent: RecentMessages, *, ticket: int | None, limit: int = 10, before_seq: int | None = None
) -> list[int] | None:
    return seqs(recent.newest(OWNER, CHAT, ticket=ticket, limit=limit, before_seq=before_seq, after_seq=0))


def test_only_the_ticket_whose_appends_proved_them_reads_them() -> None:
    recent = RecentMessages()
    recent.appended(OWNER, CHAT, messages(1), revision=0, ticket=7)
    assert newest(recent, ticket=7) == [1]
    assert newest(recent, ticket=8) is None
    assert newest(recent, ticket=None) is None
    assert recent.newest("mallory", CHAT, ticket=7, limit=10, before_seq=None, after_seq=0) is None
    recent.appended(OWNER, CHAT, messages(2), revision=0, ticket=8)  # the next turn runs on from it
    assert newest(recent, ticket=8) == [2, 1]
    assert newest(recent, ticket=7) is None


def test_they_start_over_when_the_chat_moved_on_elsewhere() -> None:
    recent = RecentMessages()
    recent.appended(OWNER, CHAT, messages(1, 2), revision=0, ticket=1)
    recent.appended(OWNER, CHAT, messages(5), revision=0, ticket=2)  # 3 and 4 came from another process
    assert newest(recent, ticket=2, limit=1) == [5]
    assert newest(recent, ticket=2) is None  # 4 and below must be read
    recent.read_older(OWNER, CHAT, 2, messages(5, 4, 3, 2, 1))
    assert newest(recent, ticket=2) == [5, 4, 3, 2, 1]
    recent.appended(OWNER, CHAT, messages(6), revision=1, ticket=3)  # a message changed meanwhile
    assert newest(recent, ticket=3) is None
    assert newest(recent, ticket=3, limit=1) == [6]


def test_a_chat_keeps_its_newest_messages_and_every_chat_its_bound() -> None:
    recent = RecentMessages(max_messages=3, max_chars=10)
    recent.appended(OWNER, CHAT, messages(1, 2, 3, 4), revision=0, ticket=1)
    assert newest(recent, ticket=1, limit=3) == [4, 3, 2]
    assert newest(recent, ticket=1, limit=4) is None
    assert newest(recent, ticket=1, limit=2, before_seq=4) == [3, 2]
    other = Message("msg_x", "chat_2", 1, Role.USER, "x" * 9, utcnow())
    recent.appended(OWNER, "chat_2", [other], revision=0, ticket=2)  # over max_chars: the older chat goes
    assert newest(recent, ticket=1) is None
    assert seqs(recent.newest(OWNER, "chat_2", ticket=2, limit=5, before_seq=None, after_seq=0)) == [1]
