"""The error tree drawn in ``gateway.errors``' docstring is the class tree in the code.

The drawing is what a developer reads to choose an error (and what a handler's
``except`` clause catches); it must name every error, with its real parent and
status.
"""

from __future__ import annotations

import inspect
import re

import pytest

from gateway import errors
from gateway.errors import GatewayError

_ROW = re.compile(
    r"^(?P<indent>[ │├└─]*?)(?:[├└]── )?(?P<name>[A-Z][A-Za-z]+)\s*(?P<status>\d{3}|4xx)?"
)


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """Class name -> (documented parent, documented status) from the docstring."""
    doc = inspect.getdoc(errors) or ""
    block = doc.split("The tree::", 1)[1].split("\n\n", 2)[1]
    out: dict[str, tuple[str | None, str | None]] = {}
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = _ROW.match(line.strip("\n"))
        assert match, line
        depth = len(match["indent"]) + (4 if "── " in line else 0)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        out[match["name"]] = (parents[-1][1] if parents else None, match["status"])
        parents.append((depth, match["name"]))
    return out


def error_classes() -> dict[str, type[GatewayError]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, GatewayError)
    }


def test_every_error_is_drawn_under_its_real_parent() -> None:
    """Same names, same parents: no error missing from the drawing, none drawn that is gone."""
    drawn = drawn_tree()
    classes = error_classes()
    assert set(drawn) == set(classes)
    for name, (parent, _) in drawn.items():
        base = classes[name].__bases__[0]
        assert (base.__name__ if base is not Exception else None) == parent, name


def test_drawn_statuses_are_the_real_ones() -> None:
    """A status in the drawing is the status the error's page is sent with."""
    classes = error_classes()
    for name, (_, status) in drawn_tree().items():
        if status is not None and status != "4xx":
            assert classes[name].status == int(status), name


@pytest.mark.parametrize(
    ("route_side", "login_side"),
    [
        (errors.RouteLevelTooLow, errors.LevelTooLow),
        (errors.MandateWithdrawn, errors.MandateMissing),
    ],
)
def test_refusals_of_a_session_are_not_login_failures(
    route_side: type[GatewayError], login_side: type[GatewayError]
) -> None:
    """The same reason on a proxied request and at the login: separate branches, one page."""
    assert issubclass(route_side, errors.AccessDenied)
    assert not issubclass(route_side, errors.LoginFailed)
    assert not issubclass(login_side, errors.AccessDenied)
    assert (route_side.status, route_side.code) == (login_side.status, login_side.code)
    assert route_side().text_nl == login_side().text_nl
