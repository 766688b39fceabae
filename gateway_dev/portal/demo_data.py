"""The demo's mandate registry: generated at start, edited live from the /demo page.

``config/demo-mandates.yaml`` holds the hand-written mandates that make each
journey visible, plus a ``generated`` block: that many extra clients for the
big office, made deterministically from a seed (so the repository does not
carry hundreds of lines of fake data, and every run shows the same names).
``write_demo_mandates`` turns it into the registry file the gateway's file
source reads; ``set_status`` rewrites one record's status atomically (the file
source notices the new file within its check interval).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import yaml

# libyaml when present: the registry file has hundreds of records.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_TRADES = (
    "Bakkerij", "Installatiebedrijf", "Transportbedrijf", "Schildersbedrijf", "Kapsalon",
    "Garage", "Hoveniersbedrijf", "Timmerbedrijf", "Loodgietersbedrijf", "Drukkerij",
    "Slagerij", "Bloemisterij", "Metaalbewerking", "Dakdekkersbedrijf", "Elektrotechniek",
    "Tegelzetterij", "Autoschade", "Koeltechniek", "Machinefabriek", "Stukadoorsbedrijf",
)  # fmt: skip
_NAMES = (
    "De Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "De Boer", "Mulder",
    "De Groot", "Bos", "Vos", "Peters", "Hendriks", "Van Leeuwen", "Dekker", "Brouwer",
    "De Wit", "Dijkstra", "Smits", "De Graaf", "Van der Meer", "Kok", "Jacobs", "Vermeulen",
    "Van Dijk", "Willems", "Hoekstra", "Koster", "Prins", "Huisman",
)  # fmt: skip
_FORMS = ("B.V.", "B.V.", "V.O.F.", "", "Holding B.V.")
_SCOPES: tuple[list[str], ...] = ([], ["declarations"], ["declarations", "employees"])


def generated_mandates(
    administrator_kvk: str, count: int, seed: int, first_kvk: int
) -> list[dict[str, Any]]:
    """``count`` active mandates for ``administrator_kvk``, the same for the same seed."""
    rng = random.Random(seed)  # fake demo data, not security
    records = []
    for i in range(count):
        name = f"{rng.choice(_TRADES)} {rng.choice(_NAMES)} {rng.choice(_FORMS)}".strip()
        record: dict[str, Any] = {
            "administrator_kvk": administrator_kvk,
            "employer_kvk": f"{first_kvk + i:08d}",
            "employer_name": name,
            "fund_employer_number": f"3{i + 1:05d}",
            "status": "active",
            "valid_from": f"20{rng.randint(15, 24)}-{rng.randint(1, 12):02d}-01",
        }
        scopes = rng.choice(_SCOPES)
        if scopes:
            record["scopes"] = list(scopes)
        records.append(record)
    return records


def write_demo_mandates(source: Path, target: Path) -> int:
    """Write the registry file ``target`` from the demo data ``source``; returns the count."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    records: list[dict[str, Any]] = list(data.get("mandates") or [])
    gen = data.get("generated")
    if gen:
        records += generated_mandates(
            str(gen["administrator_kvk"]),
            int(gen["count"]),
            int(gen["seed"]),
            int(gen["first_kvk"]),
        )
    _write(target, records)
    return len(records)


def read_mandates(path: Path) -> list[dict[str, Any]]:
    """The records of a registry file written by ``write_demo_mandates``."""
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}  # noqa: S506 - safe loader
    return list(data.get("mandates") or [])


def set_status(path: Path, administrator_kvk: str, employer_kvk: str, status: str) -> bool:
    """Set one mandate's status (``active`` or ``revoked``); False when there is no such record."""
    if status not in ("active", "revoked"):
        raise ValueError("status must be active or revoked")
    records = read_mandates(path)
    found = False
    for record in records:
        if (
            record["administrator_kvk"] == administrator_kvk
            and record["employer_kvk"] == employer_kvk
        ):
            record["status"] = status
            found = True
    if found:
        _write(path, records)
    return found


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    # Atomic replace: the gateway's file source never reads a half-written file,
    # and the new inode tells it the file changed even within the same second.
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(
        {"version": 1, "mandates": records}, Dumper=_Dumper, sort_keys=False, allow_unicode=True
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mandates-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
