"""The ingress-nginx, Traefik and Envoy forward-auth examples, checked against the gateway.

No ingress controller, Traefik or Envoy runs here, so these files are read
statically: each must ask the endpoint the gateway serves, in a way the
gateway reads (tests/flows/test_flow_forward_auth.py asks it exactly so),
copy the identity header the gateway sets, and keep the auth endpoint closed
to outsiders. The nginx example runs for real (test_nginx_forward_auth.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from gateway.config import ServerSettings
from gateway.tokens.settings import TokenSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "forward-auth"
AUTH_PATH = ServerSettings().reserved_prefix + "auth"
HEADER = TokenSettings.model_fields["header_name"].default


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def test_ingress_nginx_example_is_valid_kubernetes_and_asks_the_gateway() -> None:
    """auth-url ends at the auth endpoint, the identity header is copied, outsiders get 404."""
    docs = _docs("ingress-nginx.yaml")
    for obj in docs:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    portal, pages = docs
    notes = portal["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/auth-url"].endswith(AUTH_PATH)
    assert notes["nginx.ingress.kubernetes.io/auth-response-headers"] == HEADER
    assert "/_gateway/login?next=" in notes["nginx.ingress.kubernetes.io/auth-signin"]
    key = notes["nginx.ingress.kubernetes.io/auth-cache-key"]
    assert "$http_cookie" in key
    # In the auth subrequest $uri is the subrequest's own location: a key with $uri
    # would share one answer between every page of every employer.
    assert "$request_uri" in key and "$uri" not in key.replace("$request_uri", "")
    snippet = pages["metadata"]["annotations"]["nginx.ingress.kubernetes.io/server-snippet"]
    assert f"location = {AUTH_PATH} {{ return 404; }}" in snippet
    assert f"location ^~ {AUTH_PATH}/ {{ return 404; }}" in snippet


def test_traefik_example_asks_the_gateway_and_blocks_the_endpoint() -> None:
    """forwardAuth points at the endpoint, copies the header, and the endpoint router wins."""
    http = _docs("traefik.yaml")[0]["http"]
    auth = http["middlewares"]["eherkenning"]["forwardAuth"]
    assert auth["address"].endswith(AUTH_PATH)
    assert auth["authResponseHeaders"] == [HEADER]
    assert auth["trustForwardHeader"] is False
    routers = http["routers"]
    blocked = routers["gateway-auth-blocked"]
    assert AUTH_PATH in blocked["rule"]
    assert (
        blocked["priority"] > routers["gateway-pages"]["priority"] > routers["portal"]["priority"]
    )
    assert routers["portal"]["middlewares"] == ["eherkenning"]


def test_envoy_example_uses_the_path_prefix_the_gateway_reads() -> None:
    """ext_authz asks /_gateway/auth/<path> with the cookie, copies the header, 404 outside."""
    config = _docs("envoy.yaml")[0]["static_resources"]
    manager = config["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = manager["http_filters"][0]["typed_config"]
    assert authz["failure_mode_allow"] is False
    service = authz["http_service"]
    assert service["path_prefix"] == AUTH_PATH
    allowed = [p["exact"] for p in service["authorization_request"]["allowed_headers"]["patterns"]]
    assert "cookie" in allowed
    upstream = service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert [p["exact"] for p in upstream] == [HEADER.lower()]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"] == {"prefix": AUTH_PATH}
    assert routes[0]["direct_response"]["status"] == 404
