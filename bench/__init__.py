"""`make bench`: chatkeep measured side by side with a bare relay, the ceiling of every ratio.

`python -m bench` starts a fake OpenAI-compatible LLM, the bare relay and chatkeep as separate
processes (servers pinned to core 0, load and LLM to core 1), drives them with wrk and small
aiohttp clients, and writes the table to stdout, `bench/results/latest.json` and a chart to
`bench/results/latest.png`.
"""
