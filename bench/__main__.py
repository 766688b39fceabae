"""``python -m bench [NAME]``: run one benchmark (default: compare)."""

from __future__ import annotations

import importlib
import sys

NAMES = {
    "compare": "bench.compare",
    "proxy": "bench.proxy",
    "logins": "bench.logins",
    "tokens": "bench.tokens",
    "store": "bench.store",
    "failover": "bench.failover",
}


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "compare"
    if name not in NAMES:
        print(f"unknown benchmark {name!r}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(NAMES[name])
    sys.argv = [f"bench {name}", *sys.argv[2:]]
    return int(module.main() or 0)


sys.exit(main())
