"""The sample legacy portal: shows what the gateway forwarded to it.

Every page lists the request headers it received, so a person running the
demo can see the gateway's work: forwarded headers, the request id, and (once
login exists) the signed identity header. It trusts nothing by itself.
"""

from __future__ import annotations

import html

from aiohttp import web

_PAGE = """<!doctype html>
<html lang="nl"><head><meta charset="utf-8"><title>{title} - Voorbeeldportaal</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #fafafa; color: #1b1b1b; }}
header {{ background: #5a2d82; color: #fff; padding: .8rem 1.5rem; }}
main {{ max-width: 60rem; margin: 1.5rem auto; background: #fff; padding: 1.5rem;
        border: 1px solid #ddd; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eee;
          vertical-align: top; word-break: break-all; }}
</style></head>
<body><header>Voorbeeld werkgeversportaal (legacy)</header><main>
<h1>{title}</h1>
<p>Dit is het oude portaal achter de gateway. Hieronder staat wat de gateway doorstuurde.
<br><span lang="en">This is the legacy portal behind the gateway;
below is what it received.</span></p>
<p>Pad / path: <code>{path}</code></p>
<h2>Ontvangen headers / received headers</h2>
<table><tr><th>Header</th><th>Waarde / value</th></tr>{rows}</table>
</main></body></html>"""


async def page(request: web.Request) -> web.Response:
    """Any path: an HTML page listing the request headers."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in request.headers.items()
    )
    title = "Werkgeversportaal"
    body = _PAGE.format(title=title, path=html.escape(request.path_qs), rows=rows)
    return web.Response(text=body, content_type="text/html")


async def headers_json(request: web.Request) -> web.Response:
    """``/api/headers``: the received headers as JSON, for scripts and tests."""
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


def build_portal_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/api/headers", headers_json)
    app.router.add_route("*", "/{tail:.*}", page)
    return app
