"""What a branch write of the SQL stores works out between its reads and its writes.

The messages off a chat's current branch live in `branch_messages` (migration m017), each with
its parent and the count of branch changes when it left the current branch. A switch reads the
chat's off-branch messages' few small columns (`Node`) and finds here the path it brings on; a
siblings read finds here, among the off-branch messages at a page's seqs, those after the same
parent as a current message. Both are the memory store's rules (store/memory/store.py).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatkeep.domain import Message, Siblings
from chatkeep.store.sql.rows import Row, When


@dataclass(slots=True, frozen=True)
class Node:
    """An off-branch message as a switch reads it (`Statements.branch_nodes`)."""

    id: str
    parent_id: str | None
    seq: int
    role: str
    left_at: int
    created_at: Any  # the dialect's timestamp: comparable with another of the same chat


def path_through(message_id: str, rows: Sequence[Row]) -> list[Node] | None:
    """The off-branch messages a switch to `message_id` brings on, oldest first: its off-branch
    ancestors, it, then at each step the child that was current last; None when no off-branch
    message of the chat (`rows`, of `branch_nodes`) has that id."""
    nodes = {node.id: node for node in (Node(*row) for row in rows)}
    if message_id not in nodes:
        return None
    children: dict[str | None, list[Node]] = {}
    for node in nodes.values():
        children.setdefault(node.parent_id, []).append(node)
    path = [nodes[message_id]]
    while (parent_id := path[-1].parent_id) is not None and parent_id in nodes:
        path.append(nodes[parent_id])
    path.reverse()
    while after := children.get(path[-1].id):
        path.append(max(after, key=lambda node: (node.left_at, node.created_at, node.id)))
    return path


def siblings_from_rows(
    messages: Sequence[Message], current: Sequence[Row], off_branch: Sequence[Row], when: When
) -> dict[str, Siblings]:
    """The siblings of those of `messages` on the current branch (`current`: rows of seq, id and
    created_at of `current_between`), among `off_branch` (rows of id, parent_id, seq and
    created_at of `off_branch_between`)."""
    current_ids = {seq: (message_id, when(created_at)) for seq, message_id, created_at in current}
    after: dict[tuple[str | None, int], list[tuple[datetime, str]]] = {}
    for message_id, parent_id, seq, created_at in off_branch:
        after.setdefault((parent_id, seq), []).append((when(created_at), message_id))
    found = {}
    for message in messages:
        here = current_ids.get(message.seq)
        if here is None or here[0] != message.id:
            continue  # not on the current branch
        parent = current_ids.get(message.seq - 1)
        others = after.get((parent[0] if parent else None, message.seq))
        if others:
            ids = tuple(message_id for _, message_id in sorted([(here[1], message.id), *others]))
            found[message.id] = Siblings(ids, ids.index(message.id))
    return found
