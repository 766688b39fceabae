"""The request-shape conformance table: raw client bytes and what must come of them.

Each shape is the exact bytes a client sends and either the exact request line
the upstream must receive (plus what else the upstream must or must not see)
or the refusal the client must get, with nothing reaching the upstream. The
gateway tests (``test_request_shapes.py``) run every row; the same rows run
through Debian's nginx with ``proxy_pass``, and every row where the two
differ must be listed, with its reason, in ``docs/operations.md``.

Routes the rows assume (``shape_routes``): ``/portaal`` (strip-prefix
``/portaal``, upstream base path ``/legacy``) and a catch-all, both public.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.raw_http import Received

Check = Callable[[Received], None]


@dataclass(frozen=True)
class Shape:
    """One row: the bytes sent, and the expected outcome."""

    name: str
    raw: bytes
    forwarded: list[bytes] | None = None
    """Upstream request lines, in order; None: nothing may reach the upstream."""
    status: int | tuple[int, ...] = 200
    """The client's first status (a tuple: any of these)."""
    checks: list[Check] = field(default_factory=list)
    bodies: list[bytes] | None = None
    """Request bodies the upstream must receive, in order."""
    responses: int = 1
    """How many responses the client must get (pipelining)."""


def req(
    target: str | bytes, *headers: str | bytes, method: bytes = b"GET", body: bytes = b""
) -> bytes:
    """A request with Host and Connection: close, as bytes."""
    t = target.encode() if isinstance(target, str) else target
    lines = [method + b" " + t + b" HTTP/1.1", b"Host: gw.test"]
    lines += [h.encode() if isinstance(h, str) else h for h in headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def line(target: str | bytes, method: bytes = b"GET") -> bytes:
    t = target.encode() if isinstance(target, str) else target
    return method + b" " + t + b" HTTP/1.1"


def has_header(name: str, value: bytes | None = None) -> Check:
    def check(r: Received) -> None:
        found = r.header(name)
        assert found, f"upstream did not get {name}"
        if value is not None:
            assert found == [value], f"{name}: {found!r}"

    check.__name__ = f"has_{name}"
    return check


def lacks_header(*names: str) -> Check:
    def check(r: Received) -> None:
        present = {n.decode().lower() for n, _ in r.headers}
        for name in names:
            assert name.lower() not in present, f"upstream got {name}"

    check.__name__ = "lacks_" + "_".join(names)
    return check


REFUSED = (400,)


def _forward(
    name: str, target: str, *headers: str | bytes, checks: list[Check] | None = None
) -> Shape:
    """A GET that must reach the upstream with exactly this target."""
    return Shape(name, req(target, *headers), [line(target)], 200, checks or [])


def _refuse(name: str, raw: bytes, status: int | tuple[int, ...] = REFUSED) -> Shape:
    return Shape(name, raw, None, status)


CHUNKED_BODY = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

SHAPES: list[Shape] = [
    # --- queries: forwarded byte for byte -------------------------------------
    _forward("query-plus", "/pub/q?q=foo+bar"),
    _forward("query-pct20", "/pub/q?q=foo%20bar"),
    _forward("query-pct23-hash", "/pub/q?q=a%23b"),
    _forward("query-pct25-percent", "/pub/q?q=100%25"),
    _forward("query-pct2F-slash", "/pub/q?q=a%2Fb"),
    _forward("query-pct00-nul", "/pub/q?q=a%00b"),
    _forward("query-pct2B-plus", "/pub/q?q=1%2B1"),
    _forward("query-utf8-encoded", "/pub/q?q=caf%C3%A9"),
    _forward("query-utf8-lowercase-hex", "/pub/q?q=caf%c3%a9"),
    _forward("query-invalid-utf8-encoded", "/pub/q?q=%FF%FE"),
    _forward("query-malformed-escape", "/pub/q?q=%zz"),
    _forward("query-empty", "/pub/q?"),
    _forward("query-question-mark-inside", "/pub/q?a=1?b=2"),
    _forward("query-slashes", "/pub/q?next=/a/b"),
    _forward("query-repeated-name", "/pub/q?a=1&a=2"),
    _forward("query-semicolon-separator", "/pub/q?a=1;b=2"),
    _forward("query-sub-delims", "/pub/q?a='!$()*,"),
    _forward("query-equals-in-value", "/pub/q?a==b"),
    _forward("query-brackets-php-array", "/pub/q?a[]=1&a[]=2"),
    _forward("query-braces-pipe-caret", "/pub/q?f={x}|y^z"),
    _forward("query-long-4000", "/pub/q?q=" + "x" * 4000),
    _forward("query-encoded-ampersand", "/pub/q?q=a%26b=c"),
    _refuse("query-raw-utf8", req(b"/pub/q?q=caf\xc3\xa9")),
    _refuse("query-raw-space", b"GET /pub/q?q=a b HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    _refuse("query-fragment", req("/pub/q?q=1#frag")),
    # --- paths: forwarded as sent ---------------------------------------------
    _forward("path-plain", "/pub/a/b"),
    _forward("path-trailing-slash", "/pub/a/"),
    _forward("path-root", "/"),
    _forward("path-pct20", "/pub/a%20b"),
    _forward("path-plus", "/pub/a+b"),
    _forward("path-utf8-encoded", "/pub/caf%C3%A9"),
    _forward("path-tilde", "/pub/~user"),
    _forward("path-sub-delims", "/pub/a'b!$&()*,=:@"),
    _forward("path-brackets", "/pub/[a]"),
    _forward("path-pipe-caret", "/pub/a|b^c"),
    _forward("path-pct23-hash", "/pub/a%23b"),
    _forward("path-pct3F-question", "/pub/a%3Fb"),
    _forward("path-pct25-percent", "/pub/100%25"),
    _forward("path-double-encoded-dots", "/pub/%252e%252e/a"),
    _forward("path-encoded-letters", "/pub/%61%62c"),
    _forward("path-dot-in-name", "/pub/a.b/c..d/.e"),
    _forward("path-long-2000", "/pub/" + "a" * 2000),
    # --- paths: refused --------------------------------------------------------
    _refuse("path-dotdot", req("/pub/a/../b")),
    _refuse("path-dot", req("/pub/./a")),
    _refuse("path-dotdot-trailing", req("/pub/a/..")),
    _refuse("path-dotdot-root", req("/..")),
    _refuse("path-encoded-dotdot-lower", req("/pub/%2e%2e/a")),
    _refuse("path-encoded-dotdot-upper", req("/pub/%2E%2E/a")),
    _refuse("path-mixed-dotdot", req("/pub/.%2e/a")),
    _refuse("path-encoded-dot", req("/pub/%2e/a")),
    _refuse("path-overlong-utf8-dot", req("/pub/%C0%AE%C0%AE/a")),
    _refuse("path-encoded-slash-lower", req("/pub/a%2fb")),
    _refuse("path-encoded-slash-upper", req("/pub/a%2Fb")),
    _refuse("path-encoded-dotdot-slash", req("/pub/..%2fadmin")),
    _refuse("path-encoded-backslash", req("/pub/a%5cb")),
    _refuse("path-backslash", req(b"/pub/a\\b")),
    _refuse("path-encoded-nul", req("/pub/a%00b")),
    _refuse("path-encoded-control", req("/pub/a%0Ab")),
    _refuse("path-doubled-slash", req("/pub//a")),
    _refuse("path-leading-doubled-slash", req("//pub/a")),
    _refuse("path-parameter", req("/pub/a;b")),
    _refuse("path-parameter-first-segment", req("/pub;x=1/a")),
    _refuse("path-jsessionid", req("/pub/a;jsessionid=ABC")),
    _refuse("path-encoded-semicolon", req("/pub/a%3Bb")),
    _refuse("path-invalid-utf8", req("/pub/%FF")),
    _refuse("path-malformed-escape", req("/pub/%zz")),
    _refuse("path-truncated-escape", req("/pub/a%")),
    _refuse("path-raw-utf8", req(b"/pub/caf\xc3\xa9")),
    _refuse("path-fragment", req("/pub/a#frag")),
    _refuse("path-raw-tab", req(b"/pub/a\tb")),
    # --- request-target forms ------------------------------------------------------
    _refuse("absolute-form", req("http://other.host/x")),
    _refuse("absolute-form-same-host", req("http://gw.test/pub/x")),
    _refuse("absolute-form-userinfo", req("http://user:pw@other.host/x")),
    _refuse("absolute-form-ftp", req("ftp://other.host/x")),
    # CONNECT's authority form never reaches a route: aiohttp's router answers 404.
    _refuse(
        "authority-form-connect",
        b"CONNECT other.host:443 HTTP/1.1\r\nHost: other.host:443\r\n\r\n",
        (400, 404),
    ),
    Shape("asterisk-form-options", req("*", method=b"OPTIONS"), None, 200),
    _refuse("asterisk-form-get", req("*")),
    _refuse("target-without-slash", req("pub/x")),
    # --- request line ----------------------------------------------------------
    _refuse("http-0.9", b"GET /pub/x\r\n\r\n"),
    _refuse("http-2.0-line", b"GET /pub/x HTTP/2.0\r\nHost: gw.test\r\n\r\n", (400, 505)),
    _refuse(
        "lowercase-method", b"get /pub/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    ),
    _refuse("request-line-too-long", req("/pub/" + "a" * 20000), (400, 414)),
    _refuse("request-line-bare-lf", b"GET /pub/x HTTP/1.1\nHost: gw.test\nConnection: close\n\n"),
    # The target is unambiguous; llhttp (and nginx) read it.
    Shape(
        "request-line-double-space",
        b"GET  /pub/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        [line("/pub/x")],
    ),
    Shape(
        "http-1.0-without-host",
        b"GET /pub/x HTTP/1.0\r\n\r\n",
        [line("/pub/x")],
        200,
        [has_header("Host")],
    ),
    Shape(
        "http-1.0-keepalive-closes",
        b"GET /pub/x HTTP/1.0\r\nHost: gw.test\r\n\r\n",
        [line("/pub/x")],
    ),
    # --- headers ---------------------------------------------------------------
    _refuse("http-1.1-without-host", b"GET /pub/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
    _refuse("two-host-headers", req("/pub/x", "Host: other.test")),
    _refuse(
        "host-with-space", b"GET /pub/x HTTP/1.1\r\nHost: gw test\r\nConnection: close\r\n\r\n"
    ),
    _refuse("obs-fold", req("/pub/x", "X-A: 1", b" folded")),
    _refuse(
        "header-bare-lf",
        b"GET /pub/x HTTP/1.1\r\nHost: gw.test\nX-A: 1\r\nConnection: close\r\n\r\n",
    ),
    _refuse("header-bare-cr", req("/pub/x", b"X-A: a\rb")),
    _refuse("header-nul", req("/pub/x", b"X-A: a\x00b")),
    _refuse("space-before-colon", req("/pub/x", "X-A : 1")),
    _refuse("space-in-header-name", req("/pub/x", "X A: 1")),
    _refuse("header-without-colon", req("/pub/x", "X-A")),
    _refuse("empty-header-name", req("/pub/x", ": x")),
    _refuse("header-value-too-long", req("/pub/x", "X-A: " + "a" * 20000), (400, 431)),
    _forward(
        "header-whitespace-trimmed",
        "/pub/x",
        "X-A: \t padded \t",
        checks=[has_header("X-A", b"padded")],
    ),
    _forward(
        "header-utf8-value",
        "/pub/x",
        "X-Name: Jos\u00e9".encode(),
        checks=[has_header("X-Name", "Jos\u00e9".encode())],
    ),
    _forward(
        "header-underscore-identity",
        "/pub/x",
        "X_Gateway_Identity: forged",
        checks=[lacks_header("X_Gateway_Identity", "X-Gateway-Identity")],
    ),
    _forward(
        "header-underscore-remote-user",
        "/pub/x",
        "X_Remote_User: admin",
        checks=[lacks_header("X_Remote_User", "X-Remote-User")],
    ),
    _forward("header-underscore-any", "/pub/x", "X_Custom: 1", checks=[lacks_header("X_Custom")]),
    _forward(
        "header-underscore-request-id",
        "/pub/x",
        "X_Request_ID: forged-request-id",
        checks=[lacks_header("X_Request_ID")],
    ),
    _forward(
        "header-identity-any-case",
        "/pub/x",
        "x-GATEWAY-identity: forged",
        checks=[lacks_header("X-Gateway-Identity")],
    ),
    _forward(
        "header-x-real-ip-rebuilt",
        "/pub/x",
        "X-Real-IP: 203.0.113.9",
        checks=[has_header("X-Real-IP", b"127.0.0.1")],
    ),
    _forward(
        "header-x-forwarded-for-rebuilt",
        "/pub/x",
        "X-Forwarded-For: 203.0.113.9",
        checks=[has_header("X-Forwarded-For", b"127.0.0.1")],
    ),
    _forward(
        "header-forwarded-rebuilt",
        "/pub/x",
        "Forwarded: for=203.0.113.9",
        checks=[lambda r: _no_value(r, "Forwarded", b"203.0.113.9")],
    ),
    _forward(
        "header-x-original-url",
        "/pub/x",
        "X-Original-URL: /admin",
        checks=[lacks_header("X-Original-URL")],
    ),
    _forward(
        "header-x-rewrite-url",
        "/pub/x",
        "X-Rewrite-URL: /admin",
        checks=[lacks_header("X-Rewrite-URL")],
    ),
    _forward(
        "header-x-original-uri",
        "/pub/x",
        "X-Original-URI: /admin",
        checks=[lacks_header("X-Original-URI")],
    ),
    _forward(
        "header-method-override",
        "/pub/x",
        "X-HTTP-Method-Override: DELETE",
        checks=[lacks_header("X-HTTP-Method-Override")],
    ),
    _forward(
        "header-true-client-ip",
        "/pub/x",
        "True-Client-IP: 10.0.0.1",
        checks=[lacks_header("True-Client-IP")],
    ),
    _forward(
        "header-connection-named",
        "/pub/x",
        "Connection: X-Hop",
        "X-Hop: 1",
        checks=[lacks_header("X-Hop")],
    ),
    _forward("header-te-trailers", "/pub/x", "TE: trailers", checks=[lacks_header("TE")]),
    _forward(
        "header-gateway-cookie",
        "/pub/x",
        "Cookie: gw_session=secret; theme=dark",
        checks=[has_header("Cookie", b"theme=dark")],
    ),
    _forward("header-many-100", "/pub/x", *[f"X-H{i}: {i}" for i in range(100)]),
    # --- bodies and framing ----------------------------------------------------
    Shape(
        "post-content-length",
        req("/pub/p", "Content-Length: 5", method=b"POST", body=b"hello"),
        [line("/pub/p", b"POST")],
        bodies=[b"hello"],
        checks=[has_header("Content-Length", b"5")],
    ),
    Shape(
        "post-content-length-zero",
        req("/pub/p", "Content-Length: 0", method=b"POST"),
        [line("/pub/p", b"POST")],
        bodies=[b""],
        checks=[has_header("Content-Length", b"0")],
    ),
    Shape("post-no-body", req("/pub/p", method=b"POST"), [line("/pub/p", b"POST")], bodies=[b""]),
    Shape(
        "post-chunked",
        req("/pub/p", "Transfer-Encoding: chunked", method=b"POST", body=CHUNKED_BODY),
        [line("/pub/p", b"POST")],
        bodies=[b"hello world"],
    ),
    Shape(
        "post-chunked-extension",
        req(
            "/pub/p",
            "Transfer-Encoding: chunked",
            method=b"POST",
            body=b"5;ext=1\r\nhello\r\n0\r\n\r\n",
        ),
        [line("/pub/p", b"POST")],
        bodies=[b"hello"],
    ),
    Shape(
        "post-chunked-trailer",
        req(
            "/pub/p",
            "Transfer-Encoding: chunked",
            method=b"POST",
            body=b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        ),
        [line("/pub/p", b"POST")],
        bodies=[b"hello"],
    ),
    Shape(
        "put-chunked",
        req("/pub/p", "Transfer-Encoding: chunked", method=b"PUT", body=CHUNKED_BODY),
        [line("/pub/p", b"PUT")],
        bodies=[b"hello world"],
    ),
    Shape(
        "delete-with-body",
        req("/pub/p", "Content-Length: 2", method=b"DELETE", body=b"{}"),
        [line("/pub/p", b"DELETE")],
        bodies=[b"{}"],
    ),
    Shape(
        "get-with-body",
        req("/pub/p", "Content-Length: 3", body=b"abc"),
        [line("/pub/p")],
        bodies=[b"abc"],
    ),
    _refuse(
        "chunked-bad-size",
        req(
            "/pub/p", "Transfer-Encoding: chunked", method=b"POST", body=b"zz\r\nhello\r\n0\r\n\r\n"
        ),
    ),
    _refuse(
        "duplicate-content-length-equal",
        req("/pub/p", "Content-Length: 5", "Content-Length: 5", method=b"POST", body=b"hello"),
    ),
    _refuse(
        "duplicate-content-length-conflict",
        req("/pub/p", "Content-Length: 5", "Content-Length: 6", method=b"POST", body=b"hello!"),
    ),
    _refuse(
        "content-length-list", req("/pub/p", "Content-Length: 5, 5", method=b"POST", body=b"hello")
    ),
    _refuse("content-length-negative", req("/pub/p", "Content-Length: -1", method=b"POST")),
    _refuse(
        "content-length-plus-sign",
        req("/pub/p", "Content-Length: +5", method=b"POST", body=b"hello"),
    ),
    _refuse(
        "content-length-hex", req("/pub/p", "Content-Length: 0x5", method=b"POST", body=b"hello")
    ),
    _refuse(
        "content-length-huge",
        req("/pub/p", "Content-Length: 99999999999999999999999", method=b"POST"),
        (400, 413),
    ),
    _refuse(
        "content-length-and-chunked",
        req(
            "/pub/p",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            method=b"POST",
            body=CHUNKED_BODY,
        ),
    ),
    _refuse(
        "transfer-encoding-chunked-twice",
        req(
            "/pub/p",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked",
            method=b"POST",
            body=CHUNKED_BODY,
        ),
        (400, 501),
    ),
    _refuse(
        "transfer-encoding-gzip-chunked",
        req("/pub/p", "Transfer-Encoding: gzip, chunked", method=b"POST", body=CHUNKED_BODY),
        (400, 501),
    ),
    _refuse(
        "transfer-encoding-identity",
        req("/pub/p", "Transfer-Encoding: identity", method=b"POST", body=b"hello"),
        (400, 501),
    ),
    _refuse(
        "transfer-encoding-xchunked",
        req("/pub/p", "Transfer-Encoding: xchunked", method=b"POST", body=CHUNKED_BODY),
        (400, 501),
    ),
    _refuse(
        "transfer-encoding-chunked-not-last",
        req("/pub/p", "Transfer-Encoding: chunked, gzip", method=b"POST", body=CHUNKED_BODY),
        (400, 501),
    ),
    _refuse(
        "transfer-encoding-http-1.0",
        b"POST /pub/p HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNKED_BODY,
        (400, 501),
    ),
    Shape(
        "expect-100-continue",
        req("/pub/p", "Expect: 100-continue", "Content-Length: 5", method=b"POST", body=b"hello"),
        [line("/pub/p", b"POST")],
        200,
        [lacks_header("Expect")],
        bodies=[b"hello"],
    ),
    _refuse(
        "expect-unknown",
        req("/pub/p", "Expect: teapot", "Content-Length: 5", method=b"POST", body=b"hello"),
        (400, 417),
    ),
    # --- pipelining ------------------------------------------------------------
    Shape(
        "pipelined-two-gets",
        b"GET /pub/one HTTP/1.1\r\nHost: gw.test\r\n\r\n" + req("/pub/two"),
        [line("/pub/one"), line("/pub/two")],
        responses=2,
    ),
    Shape(
        "pipelined-post-then-get",
        b"POST /pub/one HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc"
        + req("/pub/two"),
        [line("/pub/one", b"POST"), line("/pub/two")],
        bodies=[b"abc", b""],
        responses=2,
    ),
    # Bytes after the declared body that are no request: when they arrive in the
    # same read as the valid request, the parser fails the whole read and
    # nothing is forwarded (nothing smuggled either way).
    _refuse(
        "pipelined-body-longer-than-length",
        b"POST /pub/one HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n",
    ),
]

# /portaal/... is forwarded to the upstream's /legacy/... with its raw bytes.
SHAPES += [
    Shape("strip-prefix-plain", req("/portaal/a/b?x=1+2"), [line("/legacy/a/b?x=1+2")]),
    Shape("strip-prefix-root", req("/portaal"), [line("/legacy/")]),
    Shape(
        "strip-prefix-encoded-tail",
        req("/portaal/caf%C3%A9?q=%23"),
        [line("/legacy/caf%C3%A9?q=%23")],
    ),
    Shape("strip-prefix-encoded-prefix", req("/portaa%6C/a"), [line("/legacy/a")]),
    Shape("strip-prefix-not-a-segment", req("/portaalx/a"), [line("/portaalx/a")]),
    _refuse("strip-prefix-dotdot-escape", req("/portaal/../admin")),
    _refuse("strip-prefix-absolute-form", req("http://other.host/portaal/a")),
]


def _no_value(r: Received, name: str, forbidden: bytes) -> None:
    for value in r.header(name):
        assert forbidden not in value, f"{name}: {value!r}"


def shape_routes(upstream: str) -> list[dict[str, object]]:
    """The routes every row assumes."""
    return [
        {
            "name": "portaal",
            "match": {"path": "/portaal"},
            "upstream": upstream + "/legacy",
            "strip_prefix": "/portaal",
            "policy": "public",
        },
        {"name": "all", "match": {"path": "/"}, "upstream": upstream, "policy": "public"},
    ]
