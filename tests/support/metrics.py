"""chatkeep's /metrics as a test reads it: scraped, and one sample looked up by name and labels."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

TURN_ROUTE = "/chats/{chat_id}/messages"  # the route label of a turn


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text
