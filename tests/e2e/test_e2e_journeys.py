"""The demo's user journeys in a real headless Chromium, each ending in a screenshot.

Every test starts at a portal URL, goes through the (simulated) eHerkenning
broker's page by clicking, and checks what a person would see: the gateway's
own pages or the sample portal's identity panel, which shows what the verified
token says. Screenshots: ``test-artifacts/screenshots/<journey>.png``.
"""

from __future__ import annotations

import time

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import RECHECK_SECONDS, DemoStack, save_screenshot
from tests.support.browser import WebDriver as Driver

ADMIN = "12345678"  # Administratiekantoor De Boekhouder B.V.: 352 clients
SMALL_OFFICE = "45678901"  # Salarisbureau Pietersen: 2 active clients
LIVE_REVOKE = "40000002"  # Hoveniersbedrijf Groen, revoked live on /demo
BAKKERIJ = "23456789"  # the chain scenario's client, with a mandate
FOREIGN = "34567890"  # Fietsenmakerij Spaak: no mandate for anyone


def _wait(driver: Driver, css: str, seconds: float = 15) -> WebElement:
    return WebDriverWait(driver, seconds).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _text(driver: Driver) -> str:
    """The page's text; a page replaced between finding its body and reading it is read again."""
    for _ in range(20):
        try:
            return driver.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:
            time.sleep(0.05)  # a navigation (a form submit, a redirect) was under way
    return driver.find_element(By.TAG_NAME, "body").text


def _login(driver: Driver, demo: DemoStack, scenario: str, start: str = "/") -> None:
    """Open ``start``, get sent to the broker, pick ``scenario`` and press Inloggen."""
    driver.get(demo.url + start)
    _wait(driver, f'input[name="scenario"][value="{scenario}"]').click()
    driver.find_element(By.CSS_SELECTOR, 'button[value="login"]').click()
    WebDriverWait(driver, 15).until(lambda d: d.current_url.startswith(demo.url))
    _wait(driver, "main")


def _identity(driver: Driver) -> dict[str, str]:
    """The portal's identity panel (what the verified token says)."""
    panel = _wait(driver, "#identity")
    assert panel.get_attribute("data-status") == "ok", panel.text
    return {
        key: driver.find_element(By.ID, key).text
        for key in ("administrator-kvk", "mode", "loa", "active-kvk", "employer-count")
    }


def test_direct_login_search_and_pick_an_employer(demo: DemoStack, browser: Driver) -> None:
    """Own eHerkenning: overview with 352 clients, search, pick one, the portal shows it."""
    _login(browser, demo, "direct")
    assert "/_gateway/employers" in browser.current_url
    assert "van 352 klanten" in _text(browser)
    search = browser.find_element(By.ID, "q")
    search.send_keys("Bakkerij Brood")
    search.submit()
    WebDriverWait(browser, 10).until(lambda d: "1 van 1 klanten" in _text(d))
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Kies Bakkerij Brood B.V."]').click()
    WebDriverWait(browser, 10).until(lambda d: "/_gateway/" not in d.current_url)
    seen = _identity(browser)
    assert seen["administrator-kvk"] == ADMIN
    assert seen["mode"].startswith("direct")
    assert seen["loa"] == "loa3"
    assert seen["active-kvk"] == BAKKERIJ
    assert seen["employer-count"] == "352"  # large set, fetched and digest-checked
    assert "Bakkerij Brood B.V." in browser.find_element(By.ID, "active-employer").text
    save_screenshot(browser, "direct-login-picked-employer")


def test_chain_login_with_mandate_shows_exactly_one_employer(
    demo: DemoStack, browser: Driver
) -> None:
    """Ketenmachtiging with a mandate at the fund: the portal sees one employer, selected."""
    _login(browser, demo, "chain")
    browser.get(demo.url + "/")
    seen = _identity(browser)
    assert seen["mode"].startswith("chain")
    assert seen["administrator-kvk"] == ADMIN
    assert seen["employer-count"] == "1"
    assert seen["active-kvk"] == BAKKERIJ
    rows = browser.find_elements(By.CSS_SELECTOR, "#employers tr[data-kvk]")
    assert [r.get_attribute("data-kvk") for r in rows] == [BAKKERIJ]
    assert "Bakkerij Brood B.V." in browser.find_element(By.ID, "active-employer").text
    save_screenshot(browser, "chain-login-one-employer")


def test_chain_login_without_mandate_is_refused_with_an_explanation(
    demo: DemoStack, browser: Driver
) -> None:
    """Ketenmachtiging that the fund's registry does not know: an explanatory refusal page."""
    _login(browser, demo, "chain-no-mandate")
    text = _text(browser)
    assert "Machtiging bij het pensioenfonds ontbreekt" in text
    assert "#identity" not in browser.page_source  # never reached the portal
    save_screenshot(browser, "chain-login-no-mandate-refused")


def test_eh2_login_gets_the_level_page(demo: DemoStack, browser: Driver) -> None:
    """A login at EH2 is refused with the page that asks for EH3."""
    _login(browser, demo, "direct-eh2")
    text = _text(browser)
    assert "Betrouwbaarheidsniveau te laag" in text
    assert "EH3" in text
    save_screenshot(browser, "eh2-login-level-too-low")


def test_cancel_at_the_broker_leads_back_to_a_start_page(demo: DemoStack, browser: Driver) -> None:
    """Annuleren at the broker: a cancelled page whose button starts a new login."""
    browser.get(demo.url + "/")
    _wait(browser, 'button[value="cancel"]').click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.startswith(demo.url))
    assert "Inloggen geannuleerd" in _text(browser)
    save_screenshot(browser, "cancel-at-broker")
    browser.find_element(By.CSS_SELECTOR, 'a.button[href*="/_gateway/login"]').click()
    _wait(browser, 'input[name="scenario"]')  # the broker's start page again


def test_logout_then_a_protected_page_asks_for_login_again(
    demo: DemoStack, browser: Driver
) -> None:
    """After Uitloggen (a POST from the overview), a portal page sends the browser to log in."""
    _login(browser, demo, "direct-small")
    browser.get(demo.url + "/")
    assert _identity(browser)["administrator-kvk"] == SMALL_OFFICE
    browser.find_element(By.LINK_TEXT, "Werkgevers kiezen · uitloggen").click()
    _wait(browser, 'form[action$="/logout"] button').click()
    WebDriverWait(browser, 10).until(lambda d: "/_gateway/logged-out" in d.current_url)
    assert "U bent uitgelogd" in _text(browser)
    browser.get(demo.url + "/werkgevers/40000001/overzicht")
    _wait(browser, 'input[name="scenario"]')  # at the broker: log in again
    assert "Kies hoe u inlogt" in _text(browser)
    save_screenshot(browser, "logout-then-login-again")


def test_employer_outside_the_set_gets_the_403_page(demo: DemoStack, browser: Driver) -> None:
    """Following the portal's link to a foreign employer ends on the gateway's 403 page."""
    _login(browser, demo, "direct-small")
    browser.get(demo.url + "/")
    _identity(browser)
    browser.find_element(By.ID, "foreign-link").click()
    WebDriverWait(browser, 10).until(lambda d: FOREIGN in d.current_url)
    text = _text(browser)
    assert "Geen toegang" in text
    assert "Deze werkgever hoort daar niet bij" in text
    assert "403" in text
    save_screenshot(browser, "employer-outside-set-403")


def test_mandate_revoked_during_the_session_disappears(demo: DemoStack, browser: Driver) -> None:
    """Revoking the active employer's mandate on /demo removes it at the next re-check."""
    _login(browser, demo, "direct-small")
    assert "2 van 2 klanten" in _text(browser)
    browser.find_element(
        By.CSS_SELECTOR, 'button[aria-label="Kies Hoveniersbedrijf Groen"]'
    ).click()
    WebDriverWait(browser, 10).until(lambda d: "/_gateway/" not in d.current_url)
    seen = _identity(browser)
    assert (seen["active-kvk"], seen["employer-count"]) == (LIVE_REVOKE, "2")
    browser.get(demo.url + "/demo")
    _wait(browser, f"#revoke-{LIVE_REVOKE}").click()
    _wait(browser, "#notice")
    try:
        # Within the re-check interval the gateway drops the employer. The portal
        # page then shows one employer and none active, or the gateway sends the
        # browser to the overview with a notice (when this navigation noticed it).
        deadline = time.monotonic() + 10 * RECHECK_SECONDS
        while time.monotonic() < deadline:
            browser.get(demo.url + "/")
            if "/_gateway/employers" in browser.current_url:
                assert "ingetrokken" in _text(browser)  # the notice
                break
            if _identity(browser)["employer-count"] == "1":
                assert _identity(browser)["active-kvk"] == ""
                break
            time.sleep(0.5)
        browser.get(demo.url + "/_gateway/employers")
        text = _text(browser)
        assert "1 van 1 klanten" in text
        assert "Hoveniersbedrijf Groen" not in text
        assert "Kapsalon Knip" in text
        save_screenshot(browser, "mandate-revoked-during-session")
    finally:
        browser.get(demo.url + "/demo")
        _wait(browser, f"#restore-{LIVE_REVOKE}").click()
        _wait(browser, "#notice")


def test_office_without_clients_gets_the_explanation(demo: DemoStack, browser: Driver) -> None:
    """An office no employer has authorised sees how authorising works, not an empty table."""
    _login(browser, demo, "direct-none")
    text = _text(browser)
    assert "Nog geen klanten" in text
    assert "Boekhoudbureau Nieuw B.V." in text
    assert not browser.find_elements(By.CSS_SELECTOR, "table")
    save_screenshot(browser, "office-without-clients")
