"""The chat page at `/` in Debian's Chromium."""
