"""The memory store: every chat in this process, gone on restart; the executable specification."""

from chatkeep.store.memory.store import MemoryStore

__all__ = ["MemoryStore"]
