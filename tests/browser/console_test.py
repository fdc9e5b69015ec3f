#!/usr/bin/env python3
"""The web console in headless Chromium (selenium + chromedriver) against a real daemon.

Usage: console_test.py URL DEMO_KEY ADMIN_TOKEN XSS_GPU SCREENSHOT_DIR

Signs in with the demo key, filters offers, rents one (the hold shown before
confirming is the rental's hold), sees it running, stops it, finds its charge in the
ledger, streams a chat reply; checks that an offer whose GPU name is HTML shows as
text and runs nothing; the phone width; the admin pages. Saves a screenshot of each
page. Exits non-zero on the first failed check.
"""
import json
import os
import urllib.request
import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

URL, KEY, ADMIN, XSS, SHOTS = sys.argv[1:6]
os.makedirs(SHOTS, exist_ok=True)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1
    print("ok:", what, flush=True)


opts = Options()
opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
          "--window-size=1280,900", "--no-proxy-server"]:
    opts.add_argument(a)
# Chromium's first start on a loaded machine sometimes misses chromedriver's deadline
# ("session not created"): that is the browser starting, not the console, so retry it.
for attempt in range(3):
    try:
        drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        break
    except Exception as e:  # noqa: BLE001
        print("chromium did not start (%s: %s), retrying" % (type(e).__name__, e), flush=True)
        if attempt == 2:
            raise
        time.sleep(2)
# Generous: CI runs this beside the rest of the suite on two cores.
wait = WebDriverWait(drv, 60, poll_frequency=0.2)


def shot(name):
    drv.save_screenshot(os.path.join(SHOTS, name + ".png"))
    print("screenshot:", name, flush=True)


def css(sel):
    return drv.find_elements(By.CSS_SELECTOR, sel)


def until(f, what):
    """f() until it is truthy; an exception in f (a node the 2 s refresh replaced, a
    dialog not open yet) counts as not yet."""
    last = []

    def attempt(_d):
        try:
            return f()
        except Exception as e:  # noqa: BLE001
            last[:] = [e]
            return False

    try:
        return wait.until(attempt)
    except Exception:
        why = " (last: %s: %s)" % (type(last[0]).__name__, last[0]) if last else ""
        raise AssertionError("timed out: " + what + why) from None


def go(page):
    drv.execute_script("location.hash = arguments[0]", page)


def sign_in(key):
    el = until(lambda: next((e for e in css("#key") if e.is_displayed()), None), "the sign-in form")
    el.clear()
    el.send_keys(key)
    css("#signin-form button")[0].click()
    until(lambda: css("#nav") and css("#nav")[0].is_displayed(), "signed in")


try:
    # A browser asking for / lands on the console.
    drv.get(URL + "/")
    check(drv.current_url.rstrip("/").endswith("/console"), "GET / redirects a browser to /console/")
    shot("01-sign-in")
    sign_in(KEY)
    check(drv.execute_script("return sessionStorage.getItem('spotd.key')") == KEY, "the key is in session storage")

    # Offers grouped by GPU; the XSS offer's name is text and ran nothing.
    until(lambda: len(css("tr.offer")) > 0, "offers listed")
    until(lambda: any(e.text == XSS for e in css(".gpu-name")), "the HTML-named offer listed")
    names = [e.text for e in css(".gpu-name")]
    check(XSS in names, "an offer whose GPU name is HTML shows those characters")
    check(len(names) == len(set(names)), "one group per GPU model")
    check(drv.execute_script("return window.__xss") is None, "the HTML in an offer ran nothing")
    check(len(css("#page img")) == 0, "no <img> was made from offer data")
    shot("02-offers")
    xss_el = next(e for e in css(".gpu-name") if e.text == XSS)
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", xss_el)
    shot("02b-offers-html-name-as-text")
    drv.execute_script("window.scrollTo(0, 0)")

    # Filter: one sandbox GPU model, spot only, under a price.
    target = next(n for n in names if n != XSS)
    box = css("#f-gpu")[0]
    box.clear()
    box.send_keys(target)
    Select(css("#f-intr")[0]).select_by_value("true")
    css("#offer-filters button")[0].click()
    until(lambda: all(e.text.lower().find(target.lower()) >= 0 for e in css(".gpu-name")) and css("tr.offer"),
          "offers filtered to " + target)
    rows = css("tr.offer")
    types = [r.find_elements(By.CSS_SELECTOR, "td")[5].text for r in rows]
    check(all(t == "spot" for t in types), "the interruptible filter keeps spot offers only")
    check(XSS not in [e.text for e in css(".gpu-name")], "the filter hides other GPU models")
    shot("03-offers-filtered")

    # Rent: the hold is shown before confirming, and is the rental's hold.
    rows[0].find_element(By.CSS_SELECTOR, "a.rent").click()
    hold_el = until(lambda: css("#rent-hold"), "the rent page")[0]
    shown = hold_el.get_attribute("data-hold")
    price_shown = css("#rent-price")[0].get_attribute("data-price")
    check(float(shown) > 0 and ("$" + shown) == hold_el.text, "the hold is shown before confirming")
    shot("04-rent")
    css("#rent-confirm")[0].click()
    rid = until(lambda: css("#rented-id"), "the rental created")[0].text
    check(rid.startswith("rnt_"), "rented " + rid)
    # The price is locked when the rent lands: a refresh between the page and the click
    # (the sandbox's prices drift) moves the hold with it, so compare like with like.
    req = urllib.request.Request(URL + "/v1/gpus/rentals/" + rid, headers={"Authorization": "Bearer " + KEY})
    locked = json.load(urllib.request.urlopen(req))["price_per_hour"]
    if float(locked) == float(price_shown):
        check(float(css("#rented-hold")[0].text) == float(shown), "the rental's hold is the one shown")
    else:
        check(float(css("#rented-hold")[0].text) > 0, "the price moved before the rent landed; the hold follows it")
    css("#to-rentals")[0].click()

    # Running, then stopped.
    row = '#rentals tr.rental[data-id="%s"]' % rid
    until(lambda: css(row + '[data-state="running"]'), "the rental running")
    shot("05-rentals-running")
    time.sleep(2.5)  # a few metering steps at one per second

    def stop_and_confirm():
        try:
            return drv.switch_to.alert
        except Exception:  # noqa: BLE001
            css(row + " button.stop")[0].click()
            return drv.switch_to.alert

    until(stop_and_confirm, "the stop button's confirm dialog").accept()
    until(lambda: css(row + '[data-state="terminated"]'), "the rental terminated")
    cost = until(lambda: css(row + " .cost")[0].text, "the stopped rental's cost")
    check(float(cost.lstrip("$")) > 0, "the stopped rental cost " + cost)
    shot("06-rentals-stopped")

    # Its charge in the ledger, and the spend chart.
    go("#credits")
    charge = until(lambda: css('tr.entry[data-kind="charge"][data-rental="%s"]' % rid), "the charge in the ledger")
    check(len(charge) >= 1, "the ledger shows the rental's charge")
    check(len(css('tr.entry[data-kind="hold"][data-rental="%s"]' % rid)) == 1, "and its hold")
    check(len(css("#spend-chart rect")) == 14, "a 14-day spend chart")
    check(css("#c-balance")[0].text.startswith("$"), "balance shown")
    shot("07-credits")

    # Models and a streamed chat reply from an instant model.
    go("#models")
    until(lambda: css("#chat-model option"), "models listed")
    instant = [r.find_elements(By.CSS_SELECTOR, "td")[0].text for r in css("tbody tr")
               if r.find_elements(By.CSS_SELECTOR, ".avail-instant")]
    check(instant, "an instant model is listed")
    Select(css("#chat-model")[0]).select_by_value(instant[0])
    css("#chat-prompt")[0].send_keys("Hello from the console test")
    css("#chat-send")[0].click()
    until(lambda: css("#chat-output")[0].text.strip() and css("#chat-send")[0].is_enabled(), "a streamed reply")
    reply = css("#chat-output")[0].text
    check(not reply.startswith("Error"), "the playground streamed a reply: " + reply[:60])
    shot("08-models-chat")

    go("#prices")
    until(lambda: css("#price-charts .price-chart, #price-charts .empty"), "the price history page")
    shot("09-prices")

    # A phone: one column, no sideways scrolling.
    drv.set_window_size(390, 844)
    go("#offers")
    until(lambda: css("tr.offer"), "offers at 390 px")
    time.sleep(0.3)
    width = drv.execute_script("return document.documentElement.scrollWidth")
    check(width <= 392, "no horizontal scroll at 390 px (scrollWidth %d)" % width)
    shot("10-offers-390px")
    go("#rentals")
    until(lambda: css("#rentals tr.rental"), "rentals at 390 px")
    shot("11-rentals-390px")
    drv.set_window_size(1280, 900)

    # The admin.
    css("#signout")[0].click()
    sign_in(ADMIN)
    go("#accounts")
    until(lambda: css("#page tbody tr"), "accounts listed")
    check(any("$" in r.text for r in css("#page tbody tr")), "accounts with their credit")
    shot("12-admin-accounts")
    css("#page tbody tr button")[0].click()
    until(lambda: css("#account-detail h3"), "an account's keys")
    # Spend caps: set a monthly cap and see it come back from the server.
    box = css("#cap-month")[0]
    box.clear()
    box.send_keys("123.45")
    css("#caps button")[0].click()
    until(lambda: css("#cap-month") and css("#cap-month")[0].get_attribute("value") == "123.45"
          and "caps saved" in drv.page_source, "the monthly cap saved and shown")
    check(css("#cap-hour")[0].get_attribute("value") == "", "no hourly cap set")
    check("Spent this month" in css("#spent-month")[0].text, "spent this month shown")
    shot("13-admin-account-keys")
    go("#providers")
    names = until(lambda: [r.find_elements(By.CSS_SELECTOR, "td")[0].text for r in css("#providers tbody tr")],
                  "providers listed")
    check({"lab", "nimbus"} <= set(names), "the providers, the loopback pool among them: %s" % names)
    shot("14-admin-providers")
    go("#webhooks")
    until(lambda: css("#webhooks table, #webhooks .empty"), "webhooks page")
    shot("15-admin-webhooks")
    check(drv.execute_script("return window.__xss") is None, "still nothing ran")
finally:
    drv.quit()

print("console test: %d checks passed, 0 failed" % checks)
