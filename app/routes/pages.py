"""Pages for people: `GET /` (what is loaded, its Kendall tau table, links) and `GET /docs` (Swagger UI
served from files a PyPI package ships, so the docs work on machines without internet).

The assets come from `fastapi-offline` (Swagger UI 5.x). Not `swagger-ui-bundle`: its newest release
(1.1.0) bundles Swagger UI 4.15, which refuses FastAPI's OpenAPI 3.1 document ("Unable to render this
definition"). We use only the package's static files, not its FastAPI subclass."""
from __future__ import annotations

from html import escape
from importlib.resources import files
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from model.predictor import Predictor

SWAGGER_STATIC = "/static/swagger-ui"

router = APIRouter(include_in_schema=False)
docs_router = APIRouter(include_in_schema=False)  # registered only when SNE_DOCS is on


def swagger_assets() -> StaticFiles:
    """The Swagger UI files of the installed `fastapi-offline` (mounted at SWAGGER_STATIC)."""
    return StaticFiles(directory=str(files("fastapi_offline") / "static"))


@docs_router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - docs",
        swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_STATIC}/favicon.png",
    )


def _tau_table(predictor: Predictor) -> str:
    """Kendall tau per evaluation (rows) and method (columns), as the card records it."""
    taus = predictor.card.metrics.kendall_tau
    if not taus:
        return "<p>This predictor's card records no Kendall tau evaluation.</p>"
    methods = list(dict.fromkeys(m for row in taus.values() for m in row))
    head = "".join(f"<th>{escape(m)}</th>" for m in methods)
    rows = []
    for evaluation, row in taus.items():
        cells = "".join(
            f"<td>{'&mdash;' if row.get(m) is None else f'{row[m]:.3f}'}</td>" for m in methods
        )
        rows.append(f"<tr><th>{escape(evaluation)}</th>{cells}</tr>")
    return (f"<table><caption>Kendall &tau; of predicted vs. true test accuracy (&mdash;: not applicable)</caption>"
            f"<tr><th>evaluation</th>{head}</tr>{''.join(rows)}</table>")


def _others(request: Request) -> str:
    """The predictors served next to the default (SNE_PREDICTORS_DIR), each linked to its card."""
    registry = getattr(request.app.state, "registry", None)
    others = registry.served[1:] if registry is not None else []
    if not others:
        return ""
    links = ", ".join(f'<a href="/v1/predictor?name={quote(s.name)}"><code>{escape(s.name)}</code></a>' for s in others)
    return f"<p>Also served (choose with <code>?predictor=NAME</code>): {links}.</p>"


@router.get("/", response_class=HTMLResponse)
async def landing(request: Request) -> HTMLResponse:
    predictor: Predictor | None = getattr(request.app.state, "predictor", None)
    if predictor is None:
        loaded = "<p>The predictor is still loading (see <a href=\"/readyz\">/readyz</a>).</p>"
    else:
        trained = "" if predictor.trained else " <strong>(UNTRAINED: predictions carry no information)</strong>"
        loaded = (f"<p>Predictor <code>{escape(predictor.name)}</code> version <code>{escape(predictor.version)}</code>"
                  f"{trained}.</p>{_tau_table(predictor)}{_others(request)}")
    title = escape(request.app.title)
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:48em;margin:2em auto}}td,th{{padding:.2em .6em;text-align:right}}</style>
</head><body>
<h1>{title}</h1>
<p>POST a <code>.safetensors</code> checkpoint to <code>/v1/encode</code>; get its embedding and predicted accuracy.</p>
<p><a href="/docs">API docs (Swagger UI)</a> &middot; <a href="/openapi.json">OpenAPI schema</a> &middot;
<a href="/v1/predictor">predictor card</a> &middot; <a href="/v1/predictors">all predictors</a> &middot; <a href="/readyz">readiness</a> &middot; <a href="/metrics">metrics</a></p>
{loaded}
</body></html>
""")
