"""``/docs`` (Swagger UI) with the assets the fastapi-offline package ships: nothing is fetched from another host.

The page carries its own Content-Security-Policy: Swagger UI's one inline start-up script is allowed by its
hash. (ReDoc is not served: its bundle shows a logo from its vendor's CDN.)
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def page_csp(html: bytes) -> str:
    """The policy of a docs page: its own assets, and its inline scripts by their SHA-256."""
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
                     for script in INLINE_SCRIPT.findall(html))
    return (f"default-src 'none'; script-src 'self'{hashes}; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def install_docs(app: FastAPI) -> None:
    """Serve the docs page and its assets (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        response = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI", oauth2_redirect_url=None,
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png")
        response.headers["Content-Security-Policy"] = page_csp(response.body)
        return response
