"""The docs pages' own files: every file /docs and /redoc load is served here, as what it is.

That the pages render with no outside network is tests/browser/test_docs.py's to show.
"""

import re

import httpx
import pytest

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def loaded_files(html: str) -> list[str]:
    """The URLs of the scripts, stylesheets and icons a page loads."""
    return re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize(("page", "count"), [("/docs", 3), ("/redoc", 2)])
async def test_the_files_a_docs_page_loads_are_served_here(
    offline_client: httpx.AsyncClient, page: str, count: int
) -> None:
    response = await offline_client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    files = loaded_files(response.text)
    assert len(files) == count, files  # Swagger UI: its script, stylesheet and icon; ReDoc: script and icon
    assert "/web/icon.svg" in files
    for url in files:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        served = await offline_client.get(url)
        assert served.status_code == 200, url
        content_type = served.headers["content-type"].partition(";")[0]
        assert content_type == CONTENT_TYPES[url[url.rindex(".") :]], url
        assert len(served.content) > 0, url


async def test_swagger_uis_oauth2_redirect_page_is_still_served(offline_client: httpx.AsyncClient) -> None:
    response = await offline_client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "swaggerUIRedirectOauth2" in response.text
