"""The chat page in real headless Chromium (selenium): type a prompt, watch the reply stream in.

Runs against a real uvicorn server with the real Engine on a tiny GGUF. Skipped when Chromium
and chromedriver are not installed (`apt-get install chromium chromium-driver`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_gguf

from nanochat_ternary.infer.engine import Engine
from nanochat_ternary.serve.app import create_app
from nanochat_ternary.serve.server import ServerThread

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "web-key"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path_factory.getbasetemp() / "chromium-profile0", ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_flush_denormal(True)
    gguf, mhc, _ = make_tiny_gguf(tmp_path_factory.mktemp("serve_web"))
    engine = Engine.load(gguf, mhc)
    with ServerThread(create_app(engine, api_key=KEY)) as srv:
        srv.engine = engine
        yield srv


def test_chat_page_streams_a_reply(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)  # the page reloads the model list
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "model").text == f"model: {server.engine.name}")
    for field, value in (("temperature", "0"), ("max-tokens", "40")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    # watch the assistant bubble's text length as it streams: it must grow in several steps
    browser.execute_script("""
        window.__lengths = [];
        new MutationObserver(() => {
          const b = document.querySelector('.msg.assistant .body');
          if (b) window.__lengths.push(b.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("Write fn main")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta"))  # the reply finished
    user = browser.find_element(By.CSS_SELECTOR, ".msg.user").text
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .body").text
    meta = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .meta").text
    assert user == "Write fn main"
    assert reply.strip() and "Error" not in reply
    assert "tok/s" in meta and "tokens" in meta and not meta.startswith("0 tokens")
    lengths = browser.execute_script("return window.__lengths")
    assert len(set(lengths)) >= 3, lengths  # several partial renders: it streamed, not one final write
    assert "tok/s" in browser.find_element(By.ID, "stats").text
    # the conversation continues: a second turn sends both previous messages back
    prompt.send_keys("again")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta")) == 2)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2
    shot = tmp_path / "chat_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_fenced_code_renders_as_a_code_block_with_copy(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    reply = "Here it is:\n```rust\nfn one() -> u32 {\n    1 < 2\n}\n```\nDone, <b>no html</b>."
    browser.execute_script("""
        const div = document.createElement('div'); div.className = 'msg assistant'; div.id = 'probe';
        const body = document.createElement('span'); body.className = 'body'; div.appendChild(body);
        document.getElementById('messages').appendChild(div);
        renderReply(body, arguments[0]);""", reply)
    code = browser.find_element(By.CSS_SELECTOR, "#probe .code pre code")
    assert code.get_attribute("textContent") == "fn one() -> u32 {\n    1 < 2\n}"
    assert "mono" in browser.execute_script("return getComputedStyle(arguments[0]).fontFamily", code).lower()
    assert browser.execute_script("return getComputedStyle(arguments[0].parentNode).whiteSpace", code) == "pre"
    assert browser.find_element(By.CSS_SELECTOR, "#probe .code .lang").text == "rust"
    body_text = browser.find_element(By.CSS_SELECTOR, "#probe .body").get_attribute("textContent")
    assert body_text.startswith("Here it is:\n") and body_text.endswith("Done, <b>no html</b>.")  # text, not markup
    assert not browser.find_elements(By.CSS_SELECTOR, "#probe b")
    button = browser.find_element(By.CSS_SELECTOR, "#probe .code button.copy")
    button.click()
    WebDriverWait(browser, 5).until(lambda d: button.text in ("Copied", "Copy failed"))
    assert button.text == "Copied"
    # while streaming, an unclosed fence is already code
    browser.execute_script("renderReply(document.querySelector('#probe .body'), 'x\\n```rust\\nfn a')")
    assert browser.find_element(By.CSS_SELECTOR, "#probe .code pre code").get_attribute("textContent") == "fn a"
