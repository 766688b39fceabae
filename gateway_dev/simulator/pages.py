"""The simulator's HTML: the login page, auto-post forms and error pages.

Plain HTML with a little CSS and no JavaScript requirement (the auto-post
forms submit on load when scripts run, and show a button when they do not).
Everything interpolated is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

from gateway_dev.simulator.scenarios import Scenario

_CSS = """
body{font-family:system-ui,Arial,sans-serif;background:#f3f5f8;color:#1b1f24;margin:0}
header{background:#0b3d91;color:#fff;padding:14px 32px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px;opacity:.85}
main{max-width:860px;margin:24px auto;background:#fff;padding:24px 32px;border-radius:6px;
box-shadow:0 1px 3px rgba(0,0,0,.15)}
fieldset{border:1px solid #d0d7de;border-radius:4px;margin:0 0 16px;padding:8px 16px}
legend{font-weight:600;padding:0 6px}
label{display:block;padding:8px 4px;border-bottom:1px solid #eef1f4;cursor:pointer}
label:last-child{border-bottom:0}
.meta{display:block;margin-left:26px;color:#57606a;font-size:13px}
.buttons{display:flex;gap:12px;margin-top:8px}
button{font-size:15px;padding:8px 20px;border-radius:4px;border:1px solid #0b3d91;cursor:pointer}
.primary{background:#0b3d91;color:#fff}.secondary{background:#fff;color:#0b3d91}
.note{font-size:13px;color:#57606a}.error{color:#a40e26;font-weight:600}
"""

_GROUPS = (
    ("success", "Inloggen (geslaagd) / Successful login"),
    ("cancel", "Annuleren / Cancel"),
    ("authn_failed", "Authenticatie mislukt / Authentication failed"),
    ("not_authorised", "Geen machtiging / Not authorised"),
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="nl"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>"
        "<p>Testmakelaar voor eHerkenning: geen echte inlog / Test broker: not a real login</p>"
        f"</header><main>{body}</main></body></html>"
    )


def _describe(s: Scenario) -> str:
    status = s.status()
    if status is not None:
        top, second, message = status
        return f"SAML-status {top.rsplit(':', 1)[1]}/{second.rsplit(':', 1)[1]}: {message}"
    parts = [f"niveau {s.level.name.replace('PLUS', '+')}"]
    if s.legal_subject is not None:
        if s.legal_subject.kvk:
            parts.append(f"KvK {s.legal_subject.kvk}")
        if s.legal_subject.rsin:
            parts.append(f"RSIN {s.legal_subject.rsin}")
    if s.intermediary is not None:
        parts.append(f"via intermediair KvK {s.intermediary.kvk}")
    if s.branch:
        parts.append(f"vestiging {s.branch}")
    return " · ".join(parts)


def login_page(
    *,
    title: str,
    token: str,
    action: str,
    service_provider: str,
    scenarios: Iterable[Scenario],
    error: str | None = None,
) -> str:
    """The page where a person picks a scenario, or cancels."""
    by_outcome: dict[str, list[Scenario]] = {}
    for s in scenarios:
        by_outcome.setdefault(s.outcome, []).append(s)
    first = True
    sets = []
    for outcome, legend in _GROUPS:
        items = by_outcome.get(outcome, [])
        if not items:
            continue
        rows = []
        for s in items:
            checked = " checked" if first else ""
            first = False
            rows.append(
                f'<label><input type="radio" name="scenario" value="{escape(s.id)}"{checked}> '
                f"{escape(s.label)}"
                f'<span class="meta">{escape(_describe(s))}</span></label>'
            )
        sets.append(f"<fieldset><legend>{escape(legend)}</legend>{''.join(rows)}</fieldset>")
    err = f'<p class="error">{escape(error)}</p>' if error else ""
    body = (
        "<h2>Kies hoe u inlogt</h2>"
        f'<p class="note">Dienstverlener / Service provider: {escape(service_provider)}</p>'
        f"{err}"
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="login" value="{escape(token)}">'
        f"{''.join(sets)}"
        '<div class="buttons">'
        '<button class="primary" type="submit" name="action" value="login">Inloggen</button>'
        '<button class="secondary" type="submit" name="action" value="cancel">Annuleren</button>'
        "</div></form>"
    )
    return _page(title, body)


def post_form(title: str, url: str, fields: Mapping[str, str]) -> str:
    """An auto-submitting form (HTTP-POST binding, or SAMLart by POST)."""
    inputs = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items()
    )
    body = (
        f'<form method="post" action="{escape(url)}" id="f">{inputs}'
        "<p>U wordt doorgestuurd naar de dienstverlener. / You are being sent back to the "
        "service provider.</p>"
        '<button class="primary" type="submit">Doorgaan / Continue</button></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    return _page(title, body)


def error_page(title: str, heading_nl: str, text_en: str) -> str:
    body = f"<h2>{escape(heading_nl)}</h2><p>{escape(text_en)}</p>"
    return _page(title, body)


def index_page(title: str, metadata_url: str, scenarios: Iterable[Scenario]) -> str:
    rows = "".join(f"<li><code>{escape(s.id)}</code>: {escape(s.label)}</li>" for s in scenarios)
    body = (
        "<h2>eHerkenning-simulator</h2>"
        f'<p>IdP-metadata: <a href="{escape(metadata_url)}">{escape(metadata_url)}</a></p>'
        f"<p>Scenario's:</p><ul>{rows}</ul>"
    )
    return _page(title, body)
