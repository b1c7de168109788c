"""Turns: how a chat's questions are answered, one at a time in order, whichever API asked.

`admission` lets a request in (or refuses it), `queue` orders one process's turns per chat, the
`engine` runs a turn and is the only place the store and the LLM meet, `running` keeps one record
per turn that `locate` (resume, stop), the cross-process `relay` and shutdown read, and `events`
is what a streamed turn writes and its readers follow.
"""
