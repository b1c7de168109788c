"""`chatkeep` as its users run it: `chatkeep serve` and `chatkeep chat` in subprocesses."""
