"""Headless Chromium for the dashboard's tests and screenshots: Debian's ``chromium`` driven by
Selenium through Debian's ``chromedriver`` (``make test`` installs both; nothing is downloaded at
run time, and Selenium Manager is never asked for a driver)."""
from __future__ import annotations

import shutil

MISSING = ("the browser test needs Debian's chromium and chromium-driver (make test installs them: "
           "apt-get install chromium chromium-driver)")


def chromium(width: int = 1440, height: int = 1100, lang: str = "en-US"):
    """A headless Chromium session (quit it when done); RuntimeError when the browser is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", f"--lang={lang}", "--no-first-run", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": f"{lang},{lang.split('-')[0]}"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def sign_in(driver, url: str, username: str, password: str, query: str = "") -> None:
    """Open the dashboard at ``url`` (with the page's URL parameters ``query``) and sign in through its form."""
    from selenium.webdriver.common.by import By

    from tests.processes import wait_for

    driver.get(f"{url}/dashboard" + (f"?{query}" if query else ""))
    wait_for(lambda: driver.find_element(By.ID, "signin").is_displayed(), 20, "the sign-in form")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "signin-submit").click()
    wait_for(lambda: not driver.find_element(By.ID, "signin").is_displayed(), 20, "signed in")
