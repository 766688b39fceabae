"""Development-only parts of the repository: never in the production wheel or image.

- ``simulator``: the eHerkenning broker simulator (an identity provider with
  real SAML crypto; docs/simulator.md);
- ``portal``: the sample legacy portal, which checks the identity token the way
  docs/backends.md tells a backend to (``portal/verify.py``);
- ``demo`` and ``demo_splitter``: what ``./dev demo`` runs;
- ``devkeys``: throw-away key pairs with self-signed certificates.

The wheel is built from ``gateway/`` alone (``[tool.hatch.build.targets.wheel]``
in pyproject.toml); ``./dev`` installs the repository editable, which puts this
package on the path too. Code here may import ``gateway``; ``gateway`` never
imports this package (tests/core/test_dev_boundary.py).
"""
