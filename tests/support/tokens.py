"""Reference backend verifier: exactly what docs/backends.md tells a Python backend to do.

The code lives in ``gateway_dev/portal/verify.py``, the sample portal's own token
check, which imports nothing else from ``gateway``: a backend has only the
token, the JWKS URL, its own configuration and the documented rules. Tests use
this same code, so the contract the docs state is the one the tests check.

``PyJWKClient`` and ``urllib`` block; async code calls ``verify`` and
``employer_set`` through ``asyncio.to_thread`` (or uses ``employer_set_async``).
"""

from gateway_dev.portal.verify import (
    REQUIRED_CLAIMS,
    IdentityVerifier,
    check_employers_document,
    employers_digest,
)

__all__ = ["REQUIRED_CLAIMS", "IdentityVerifier", "check_employers_document", "employers_digest"]
