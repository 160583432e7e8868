"""The web app in a real browser: `facechain serve --demo` (the tiny model) with a tokens file of two
accounts, driven by Playwright through the system's headless Chromium (installed by scripts/test.sh from
the package manager; no browser build is downloaded). Logs in (another account's token refused), uploads
the sample photos with consent, trains, generates portraits, sees the gallery, the manifest and the Runs
table; the other account, in its own browser, sees none of it; then deletes the person with the People
tab's button and checks nothing of theirs is left on disk; the screenshots are kept in
test-artifacts/serve/."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "serve"
TOKEN, BOB = "browser-test-" + "t" * 24, "browser-bob-" + "b" * 24  # the accounts "ada" and "bob"


def _chromium() -> str:
    path = os.environ.get("FACECHAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found: scripts/test.sh installs it with the package manager (apt-get install "
                    "chromium); or set FACECHAIN_CHROMIUM to a Chromium binary")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_in(page, account: str, token: str) -> None:
    """Fill Gradio's login form (the account's name, its token) and press Login."""
    page.locator("input[type=password]").first.wait_for(timeout=60_000)
    page.locator("input:not([type=password])").first.fill(account)
    page.locator("input[type=password]").first.fill(token)
    page.get_by_role("button", name="Login").click()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    port = _free_port()
    tokens = work / "tokens.txt"
    tokens.write_text(f"ada:{TOKEN}\nbob:{BOB}\n")
    tokens.chmod(0o600)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               FACECHAIN_SERVE_TOKENS_FILE=str(tokens))
    env.pop("FACECHAIN_SERVE_TOKEN", None)
    env.pop("GRADIO_TEMP_DIR", None)  # an in-process server of another test set it for this process
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "facechain", "serve", "--demo", "--workdir", str(work / "wd"),
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (work / "server.log").read_text()
    else:
        proc.kill()
        raise AssertionError("the server did not start:\n" + (work / "server.log").read_text())
    yield url, work
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_train_then_portraits_in_a_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from facechain.samples import write_demo_photos

    url, work = server
    photos = [str(p) for p in write_demo_photos(tmp_path / "photos")]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            assert page.request.get(url + "/api/people").status == 401  # the API without the token
            page.goto(url, wait_until="domcontentloaded")  # never network-idle: the tabs poll their jobs each second
            _log_in(page, "ada", BOB)  # another account's token
            expect(page.get_by_text("Incorrect", exact=False).first).to_be_visible(timeout=30_000)
            _log_in(page, "ada", TOKEN)  # both fields again: the page clears them after a refusal
            expect(page.locator("#train-button")).to_be_visible(timeout=60_000)
            page.locator("#train-name textarea, #train-name input").first.fill("Ada")
            page.locator("#train-photos input[type=file]").set_input_files(photos)
            expect(page.locator("#train-photos")).to_contain_text("01_upright.png", timeout=30_000)
            page.locator("#train-button").click()
            expect(page.locator("#train-status")).to_contain_text("consent is required", timeout=30_000)
            page.locator("#train-consent input").check()
            page.locator("#train-button").click()
            expect(page.locator("#train-status")).to_contain_text("done", timeout=240_000)
            expect(page.locator("#train-report")).to_contain_text("07_notes.jpg")  # the refused text file, with reason
            expect(page.locator("#train-kept img").first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "01_train.png"), full_page=True)

            page.get_by_role("tab", name="Portraits").click()
            page.locator("#portrait-refresh").click()
            page.locator("#portrait-person input").click()
            page.get_by_role("option", name="Ada", exact=False).first.click()
            page.locator("#generate-button").click()
            expect(page.locator("#generate-status")).to_contain_text("done", timeout=240_000)
            expect(page.locator("#portrait-gallery img").first).to_be_visible(timeout=30_000)
            expect(page.locator("#portrait-manifest")).to_contain_text("Business suit", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "02_portraits.png"), full_page=True)

            page.get_by_role("tab", name="Runs").click()
            page.locator("#runs-refresh").click()
            expect(page.locator("#runs-table")).to_contain_text("generate", timeout=30_000)
            expect(page.locator("#runs-table")).to_contain_text("train")
            page.screenshot(path=str(ARTIFACTS / "03_runs.png"), full_page=True)

            other = browser.new_page(viewport={"width": 1400, "height": 1000})  # bob, in a browser of his own
            other.goto(url, wait_until="domcontentloaded")
            _log_in(other, "bob", BOB)
            other.get_by_role("tab", name="People").click()
            other.locator("#people-refresh").click()
            other.locator("#people-person input").click()
            other.wait_for_timeout(1500)
            assert other.get_by_role("option", name="Ada", exact=False).count() == 0  # Ada is not Bob's
            other.get_by_role("tab", name="Runs").click()
            other.locator("#runs-refresh").click()
            other.wait_for_timeout(1500)
            expect(other.locator("#runs-table")).not_to_contain_text("generate")
            other.screenshot(path=str(ARTIFACTS / "04_other_account.png"), full_page=True)
            other.close()

            person_dirs = [p for p in (work / "wd" / "people").iterdir() if (p / "person.json").is_file()]
            assert len(person_dirs) == 1
            digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in person_dirs[0].rglob("*") if p.is_file()}
            digests |= {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in photos}  # the uploads as sent
            page.get_by_role("tab", name="People").click()
            page.locator("#people-refresh").click()
            page.locator("#people-person input").click()
            page.get_by_role("option", name="Ada", exact=False).first.click()
            expect(page.locator("#people-record")).to_contain_text("consent", timeout=30_000)
            page.locator("#people-delete").click()
            expect(page.locator("#people-status")).to_contain_text("tick the box", timeout=30_000)
            page.locator("#people-confirm input").check()
            page.locator("#people-delete").click()
            expect(page.locator("#people-status")).to_contain_text("deleted", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "05_deleted.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    for name in ("01_train.png", "02_portraits.png", "03_runs.png", "04_other_account.png", "05_deleted.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
    left = [p for p in (work / "wd").rglob("*") if p.is_file()]
    assert not list((work / "wd" / "people").iterdir()) and not list((work / "wd" / "jobs").iterdir())
    copies = [p for p in left if hashlib.sha256(p.read_bytes()).hexdigest() in digests]
    assert not copies, f"copies of the deleted person's files left: {copies}"  # the web app's cache included
