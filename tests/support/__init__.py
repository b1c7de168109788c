"""What the tests share, one module a thing they need; fixtures stay in the conftest.py files.

- `app`: chatkeep served by uvicorn on a real socket in the test process, and its test settings.
- `chats`: chats and turns driven over chatkeep's native HTTP API, and what they read back as.
- `sse`: the server-sent events of a streamed turn, parsed.
- `metrics`: /metrics scraped, and a sample looked up in it.
- `fake_openai`: a fake OpenAI-compatible upstream on a real socket, scripted by the tests.
- `stores`: fresh databases for each store, and SQL helpers for the store tests.
- `servers`: `chatkeep` itself as a subprocess: `chatkeep serve` and the `chatkeep chat` client.
- `ports`: a local port nothing listens on.
- `conditions`: waiting for a condition to hold.
- `browser`: Debian's Chromium driven by Playwright.
"""
