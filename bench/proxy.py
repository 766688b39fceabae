"""``./dev bench proxy``: the proxy rows of ``bench compare`` (bare proxy, gateway, nginx).

The same run as ``./dev bench compare --rows nginx-proxy,bare,bare-uvloop,gw-public,
gw-auth-100,gw-auth-10k``; every option of ``bench compare`` applies
(``--seconds``, ``--rounds``, ``--session-cache``, ``--quick``).
"""

from __future__ import annotations

import sys

from bench.compare import PRESETS
from bench.compare import main as compare


def main() -> int:
    return compare(["--rows", PRESETS["proxy"], *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
