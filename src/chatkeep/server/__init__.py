"""The serving process: the app assembled for its lifespan (`app.py`: store, LLM, rate limit,
service, middleware, routers), the HTTP limits uvicorn's protocol holds without a proxy
(`http_limits.py`), and the wind-down of running streams on SIGTERM (`shutdown.py`).

`chatkeep serve` (cli/serve.py), the tests' server and the bench run what is here."""
