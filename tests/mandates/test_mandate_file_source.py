"""The file registry: YAML/CSV format, clear validation errors, reload on change."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.errors import ConfigInvalid, RegistryUnavailable
from gateway.mandates import MandateStatus
from gateway.mandates.file_source import FileMandateSource, parse_mandate_file
from tests.support.clock import FakeClock

EXAMPLES = Path(__file__).resolve().parents[2] / "config"

GOOD = """\
version: 1
mandates:
  - administrator_kvk: "11111111"
    employer_kvk: "30000001"
    employer_name: "Bakkerij"
    status: active
    valid_from: 2024-01-01
    scopes: [declarations]
"""


def _write(path: Path, text: str) -> None:
    # Bump mtime explicitly: two writes in the same clock tick must still look different.
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    st = path.stat()
    if st.st_mtime_ns <= old:
        os.utime(path, ns=(st.st_atime_ns, old + 1_000_000))


def problems(exc: ConfigInvalid) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in exc.problems]


def test_example_files_are_valid_and_equivalent() -> None:
    """The shipped YAML and CSV examples parse and describe the same registry."""
    yaml_index = parse_mandate_file(EXAMPLES / "mandates.example.yaml")
    csv_index = parse_mandate_file(EXAMPLES / "mandates.example.csv")
    assert yaml_index == csv_index
    first = yaml_index["11111111"][0]
    assert first.employer_name == "Bakkerij De Korst B.V."
    assert first.status is MandateStatus.ACTIVE
    assert first.scopes == frozenset({"declarations", "employees", "invoices"})
    assert yaml_index["11111111"][1].valid_until == dt.date(2030, 1, 1)


def test_yaml_errors_name_file_path_and_problem(tmp_path: Path) -> None:
    """Every invalid field is reported with the file, its path and a plain message."""
    f = tmp_path / "m.yaml"
    f.write_text(
        "mandates:\n"
        "  - administrator_kvk: 11111111\n"  # unquoted: a number
        '    employer_kvk: "3000"\n'
        '    employer_name: "X"\n'
        "    status: active\n"
        "    valid_from: 2024-13-01\n"
        "  - employer_kvk: '30000001'\n"
        "    employer_name: Y\n"
        "    status: active\n"
        "    valid_from: 2024-01-01\n"
        "    valid_untill: 2025-01-01\n"
    )
    with pytest.raises(ConfigInvalid) as info:
        parse_mandate_file(f)
    found = problems(info.value)
    assert all(p.file == str(f) for p in info.value.problems)
    paths = [p for p, _ in found]
    assert "mandates[0].administrator_kvk" in paths
    assert "mandates[0].employer_kvk" in paths
    assert "mandates[1].valid_untill" in paths  # a typo is an error, not ignored
    assert "mandates[1].administrator_kvk" in paths
    assert any("quote it" in m for p, m in found if p == "mandates[0].administrator_kvk")
    assert str(f) in str(info.value)


def test_valid_until_must_follow_valid_from(tmp_path: Path) -> None:
    """An end date on or before the start date is rejected (it would never be valid)."""
    f = tmp_path / "m.yaml"
    f.write_text(GOOD + "    valid_until: 2024-01-01\n")
    with pytest.raises(ConfigInvalid) as info:
        parse_mandate_file(f)
    assert problems(info.value) == [
        ("mandates[0].valid_until", "valid_until must be after valid_from (it is exclusive)")
    ]


def test_csv_errors_name_the_physical_line(tmp_path: Path) -> None:
    """CSV problems name the line as an editor shows it, comments included."""
    f = tmp_path / "m.csv"
    f.write_text(
        "# comment\n"
        "administrator_kvk,employer_kvk,employer_name,status,valid_from\n"
        "11111111,30000001,A,active,2024-01-01\n"
        "\n"
        "11111111,3000002,B,active,2024-01-01\n"
    )
    with pytest.raises(ConfigInvalid) as info:
        parse_mandate_file(f)
    assert [p for p, _ in problems(info.value)] == ["line 5.employer_kvk"]


def test_csv_with_wrong_cell_count_is_rejected(tmp_path: Path) -> None:
    """A CSV row with more or fewer cells than the header is an error for that line."""
    f = tmp_path / "m.csv"
    f.write_text("administrator_kvk,employer_kvk\n11111111,30000001,extra\n")
    with pytest.raises(ConfigInvalid) as info:
        parse_mandate_file(f)
    assert problems(info.value) == [("line 2", "3 cells, the header has 2")]


@pytest.mark.parametrize(
    ("name", "text", "path"),
    [
        ("m.yaml", "mandates: [\n", "line 2"),
        ("m.yaml", "- a\n", ""),
        ("m.yaml", "version: 2\nmandates: []\n", "version"),
        ("m.txt", "", ""),
    ],
)
def test_unusable_files_are_rejected(tmp_path: Path, name: str, text: str, path: str) -> None:
    """Broken YAML, a wrong top level, an unknown version or extension are clear errors."""
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigInvalid) as info:
        parse_mandate_file(f)
    assert info.value.problems[0].path == path


async def test_source_returns_mandates_per_administrator(tmp_path: Path) -> None:
    """Lookups return that administrator's mandates, and [] for an unknown one."""
    f = tmp_path / "m.yaml"
    shutil.copy(EXAMPLES / "mandates.example.yaml", f)
    source = FileMandateSource(f)
    assert len(await source.mandates_for("11111111")) == 4
    assert await source.mandates_for("99999999") == []
    await source.close()


async def test_changes_are_picked_up_after_the_check_interval(tmp_path: Path) -> None:
    """An edited file is reloaded at the next lookup after check_interval, not before."""
    f = tmp_path / "m.yaml"
    f.write_text(GOOD)
    clock = FakeClock(0.0)
    source = FileMandateSource(f, check_interval=5, clock=clock.time)
    assert [m.status for m in await source.mandates_for("11111111")] == ["active"]
    _write(f, GOOD.replace("status: active", "status: revoked"))
    clock.advance(4)
    assert [m.status for m in await source.mandates_for("11111111")] == ["active"]
    clock.advance(1)
    assert [m.status for m in await source.mandates_for("11111111")] == ["revoked"]


async def test_marked_stale_file_is_read_at_the_next_lookup(tmp_path: Path) -> None:
    """After a revocation push (mark_stale) the next lookup reads the file, interval or not."""
    f = tmp_path / "m.yaml"
    f.write_text(GOOD)
    clock = FakeClock(0.0)
    source = FileMandateSource(f, check_interval=60, clock=clock.time)
    assert [m.status for m in await source.mandates_for("11111111")] == ["active"]
    _write(f, GOOD.replace("status: active", "status: revoked"))
    source.mark_stale()
    assert [m.status for m in await source.mandates_for("11111111")] == ["revoked"]


async def test_invalid_reload_keeps_last_good_data_and_logs(tmp_path: Path) -> None:
    """A broken edit is logged once and ignored; the previous data stays until it is fixed."""
    f = tmp_path / "m.yaml"
    f.write_text(GOOD)
    clock = FakeClock(0.0)
    source = FileMandateSource(f, check_interval=1, clock=clock.time)
    source.load()
    _write(f, GOOD.replace('"30000001"', '"300"'))
    clock.advance(1)
    with capture_logs() as logs:
        assert len(await source.mandates_for("11111111")) == 1
        clock.advance(1)
        await source.mandates_for("11111111")
    failed = [e for e in logs if e["event"] == "mandate_file_reload_failed"]
    assert len(failed) == 1
    assert failed[0]["problems"] == [
        "mandates[0].employer_kvk: String should match pattern '^[0-9]{8}$'"
    ]
    assert failed[0]["kept_last_good"] is True
    _write(f, GOOD.replace('"30000001"', '"30000009"'))
    clock.advance(1)
    assert (await source.mandates_for("11111111"))[0].employer_kvk == "30000009"


async def test_deleted_file_keeps_last_good_data(tmp_path: Path) -> None:
    """A file that disappears is logged; lookups keep answering from the last good data."""
    f = tmp_path / "m.yaml"
    f.write_text(GOOD)
    clock = FakeClock(0.0)
    source = FileMandateSource(f, check_interval=1, clock=clock.time)
    await source.mandates_for("11111111")
    f.unlink()
    clock.advance(1)
    with capture_logs() as logs:
        assert len(await source.mandates_for("11111111")) == 1
    assert [e["event"] for e in logs] == ["mandate_file_missing"]


async def test_never_loaded_file_fails_closed(tmp_path: Path) -> None:
    """Without any valid version of the file, lookups raise RegistryUnavailable."""
    f = tmp_path / "m.yaml"
    f.write_text("mandates: 3\n")
    source = FileMandateSource(f)
    with pytest.raises(RegistryUnavailable):
        await source.mandates_for("11111111")
    with pytest.raises(ConfigInvalid):
        source.load()


def test_empty_administrator_in_a_file_is_an_error(tmp_path: Path) -> None:
    """A file row with an empty administrator_kvk is reported, never silently dropped."""
    f = tmp_path / "m.yaml"
    f.write_text(GOOD.replace('administrator_kvk: "11111111"', 'administrator_kvk: ""'))
    with pytest.raises(ConfigInvalid) as info:
        parse_mandate_file(f)
    assert problems(info.value) == [("mandates[0].administrator_kvk", "Field required")]
