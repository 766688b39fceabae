"""Apache httpd (Debian's package): ``mod_proxy``, and ``mod_auth_mellon`` in front of it.

What a user who does not run the gateway would pick: Apache as the reverse
proxy, and mod_auth_mellon for the SAML login. Each Apache runs as one
foreground process (``apache2 -X``: the event MPM's threads in a single
process, pinned to the server core) with its own ServerRoot, PidFile, port
and logs inside the run's folder; the package's service is never used. It
writes an access log like the other servers, and keeps client connections
open as long as the load generator wants (``MaxKeepAliveRequests 0``).

mod_auth_mellon gets real SAML: an IdP (the "broker") whose key is generated
here, IdP and SP metadata files, and signed Responses built by the test
suite's SAML builder (``tests/support/saml.py``) in the eHerkenning shape the
gateway receives (signed assertion, encrypted identifiers in attributes,
nested Advice assertions). Mellon verifies the signature and checks the
conditions; it cannot decrypt identifiers inside attribute values, so it does
less work per login than the gateway does. Its sessions are created by
posting such Responses to its ACS, exactly what a browser does after an
IdP's POST binding; the ``mellon-cookie`` it sets is what the rows send.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from bench.harness import OneShot, fetch, free_port, wait_http
from bench.targets import PAGE_MARKER, PAGE_PATH, Env, Row, Target
from tests.support.saml import BROKER_ID, ResponseSpec, SamlWorld, cert_b64, to_bytes

APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
MELLON_CACHE_SIZE = 2000
"""Sessions mellon keeps (its default is 100): the rows' sessions plus a run's logins."""

BASE_MODULES = (
    "mpm_event",
    "authn_core",
    "authz_core",
    "authz_user",
    "headers",
    "proxy",
    "proxy_http",
)


ONE_PROCESS = "ServerLimit 1\nThreadsPerChild 64\nMaxRequestWorkers 64"
"""The event MPM as one process of 64 threads (run with ``-X``): one core's worth."""


def _apache_conf(
    folder: Path, port: int, body: str, modules: tuple[str, ...], *, whole_box: bool = False
) -> str:
    loads = "\n".join(f"LoadModule {m}_module {MODULES / f'mod_{m}.so'}" for m in modules)
    # Apache will not serve pages as root: started as root it switches to www-data.
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    return f"""
ServerRoot {folder}
ServerName 127.0.0.1
DefaultRuntimeDir {folder}
PidFile {folder / "httpd.pid"}
Mutex file:{folder} default
Listen 127.0.0.1:{port}
{loads}
{user}
ErrorLog {folder / "error.log"}
LogLevel warn
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
CustomLog {folder / "access.log"} combined
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 75
{"" if whole_box else ONE_PROCESS}
ListenBacklog 4096
{body}
"""


def start_apache(
    env: Env,
    name: str,
    port: int,
    body: str,
    modules: tuple[str, ...],
    *,
    whole_box: bool = False,
) -> tuple[str, int]:
    """Start ``apache2 -X`` on ``port`` with ``body`` in its configuration; (base URL, pid).

    ``whole_box``: Apache as installed instead, its event MPM's own defaults (several
    processes of 25 threads) on every core, in the foreground.
    """
    folder = env.folder(name)
    conf = folder / "httpd.conf"
    conf.write_text(_apache_conf(folder, port, body, modules, whole_box=whole_box))
    for path in folder.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)
    if whole_box:
        cmd = [APACHE, "-D", "FOREGROUND", "-d", str(folder), "-f", str(conf)]
    else:
        cmd = env.server_cmd([APACHE, "-X", "-d", str(folder), "-f", str(conf)])
    log = folder / "stderr.log"
    proc = env.processes.start(cmd, log=log)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/", proc=proc, log=log)
    return base, proc.pid


@dataclass
class ApacheProxy(Target):
    def start(self, env: Env) -> None:
        body = f"ProxyPass / {env.upstream_url}/\nProxyPassReverse / {env.upstream_url}/\n"
        self.base_url, pid = start_apache(env, self.name, free_port(), body, BASE_MODULES)
        self._pids = [pid]


# -- mod_auth_mellon ----------------------------------------------------------

MELLON_ENDPOINT = "/mellon"


@dataclass
class ApacheMellon(Target):
    """Apache + mod_auth_mellon protecting the whole site, proxying to the portal."""

    whole_box: bool = False
    """Apache with its MPM defaults on every core (see ``start_apache``)."""
    _world: SamlWorld | None = None
    _folder: Path | None = None
    _sessions: list[str] = field(default_factory=list)

    @property
    def entity_id(self) -> str:
        return self.base_url + MELLON_ENDPOINT + "/metadata"

    @property
    def acs_url(self) -> str:
        return self.base_url + MELLON_ENDPOINT + "/postResponse"

    def start(self, env: Env) -> None:
        folder = env.folder(self.name)
        self._folder = folder
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        world = SamlWorld(folder)
        self._world = world
        world.sp_signing.write(folder / "sp.key", folder / "sp.crt")
        (folder / "idp-metadata.xml").write_bytes(
            world.broker_metadata(sso_url="http://127.0.0.1:9/sso").replace(
                b"<md:IDPSSODescriptor ", b'<md:IDPSSODescriptor WantAuthnRequestsSigned="true" '
            )
        )
        cert = cert_b64(world.sp_signing.cert_pem)
        # The SP's encryption key is the test world's, so responses encrypt to it.
        world.sp_encryption = world.sp_signing
        (folder / "sp-metadata.xml").write_text(_sp_metadata(self.entity_id, self.acs_url, cert))
        body = f"""
MellonCacheSize {MELLON_CACHE_SIZE}
MellonCacheEntrySize 131072
MellonLockFile {folder / "mellon.lock"}
MellonPostDirectory {folder}
<Location />
    AuthType Mellon
    Require valid-user
    MellonEnable auth
    MellonEndpointPath {MELLON_ENDPOINT}
    MellonSPPrivateKeyFile {folder / "sp.key"}
    MellonSPCertFile {folder / "sp.crt"}
    MellonSPMetadataFile {folder / "sp-metadata.xml"}
    MellonIdPMetadataFile {folder / "idp-metadata.xml"}
    MellonSecureCookie Off
    MellonSessionLength 28800
    # Tell the portal who logged in, as the gateway's token does.
    RequestHeader set X-Remote-User "%{{MELLON_NAME_ID}}e"
</Location>
ProxyPass {MELLON_ENDPOINT}/ !
ProxyPass / {env.upstream_url}/
ProxyPassReverse / {env.upstream_url}/
"""
        _, pid = start_apache(
            env, self.name, port, body, (*BASE_MODULES, "auth_mellon"), whole_box=self.whole_box
        )
        self._pids = [pid]

    def _response(self) -> bytes:
        """A fresh signed eHerkenning-shaped Response for mellon's ACS (unsolicited)."""
        spec = ResponseSpec(
            request_id="_" + uuid.uuid4().hex,
            now=dt.datetime.now(dt.UTC),
            issuer=BROKER_ID,
            audiences=[self.entity_id],
            destination=self.acs_url,
            recipient=self.acs_url,
            sign_response=True,
            not_on_or_after_offset=3600,
            scd_not_on_or_after_offset=3600,
        )
        assert self._world is not None
        return to_bytes(self._world.response(spec))

    def _acs_shot(self) -> OneShot:
        body = {
            "SAMLResponse": base64.b64encode(self._response()).decode(),
            "RelayState": self.base_url + PAGE_PATH,
        }
        # mellon first checks that the browser takes cookies: its test value must come along.
        return OneShot(
            "POST",
            self.acs_url,
            {"Cookie": "mellon-cookie=cookietest"},
            body,
            expect=frozenset({302, 303}),
        )

    def logins(self, env: Env, count: int) -> list[OneShot]:
        return [self._acs_shot() for _ in range(count)]

    def sessions(self, env: Env, count: int) -> list[str]:
        import asyncio

        while len(self._sessions) < count:
            shots = self.logins(env, count - len(self._sessions))
            self._sessions.extend(asyncio.run(_post_for_cookies(shots)))
        cookies = [f"mellon-cookie={value}" for value in self._sessions[:count]]
        status, _, body = fetch(self.auth_url(), {"Cookie": cookies[0]})
        if status != 200 or PAGE_MARKER not in body:
            raise RuntimeError(f"mellon session refused: {status} {body[:300]!r}")
        return cookies

    def login_start_url(self) -> str:
        return f"{self.base_url}{MELLON_ENDPOINT}/login?ReturnTo=" + quote(
            self.base_url + PAGE_PATH, safe=""
        )


async def _post_for_cookies(shots: list[OneShot]) -> list[str]:
    import aiohttp

    out: list[str] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for shot in shots:
            async with client.post(
                shot.url, data=shot.body, headers=shot.headers, allow_redirects=False
            ) as resp:
                text = await resp.text()
                cookies = resp.headers.getall("Set-Cookie", [])
                found = [
                    m.group(1) for c in cookies if (m := re.match(r"mellon-cookie=([0-9a-f]+)", c))
                ]
                if resp.status not in shot.expect or not found:
                    raise RuntimeError(f"mellon refused a login: {resp.status} {text[:500]}")
                out.append(found[0])
    return out


def _sp_metadata(entity_id: str, acs_url: str, cert: str) -> str:
    key_info = (
        '<ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data>'
        f"<ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
    )
    return f"""<?xml version="1.0"?>
<EntityDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{entity_id}">
  <SPSSODescriptor AuthnRequestsSigned="true" WantAssertionsSigned="true"
      protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <KeyDescriptor use="signing">{key_info}</KeyDescriptor>
    <KeyDescriptor use="encryption">{key_info}</KeyDescriptor>
    <NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:transient</NameIDFormat>
    <AssertionConsumerService index="0" isDefault="true"
        Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="{acs_url}"/>
  </SPSSODescriptor>
</EntityDescriptor>
"""


def targets() -> list[Target]:
    return [
        ApacheProxy(
            name="apache-proxy",
            rows=(Row("apache-proxy", "Apache mod_proxy", "apache-proxy", "page"),),
        ),
        ApacheMellon(
            name="mellon",
            rows=(
                Row(
                    "mellon-auth",
                    "Apache + mod_auth_mellon, authenticated, 100 sessions",
                    "mellon",
                    "auth",
                    sessions=100,
                ),
                Row("mellon-login-start", "mellon: start of login", "mellon", "login_start"),
                Row("mellon-login", "mellon: login (ACS POST)", "mellon", "login"),
            ),
        ),
        ApacheMellon(
            name="mellon-box",
            whole_box=True,
            rows=(
                Row(
                    "box-mellon-auth",
                    "whole box: Apache + mod_auth_mellon (MPM defaults), authenticated, "
                    "100 sessions",
                    "mellon-box",
                    "auth",
                    sessions=100,
                ),
            ),
        ),
    ]
