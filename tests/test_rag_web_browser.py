"""The served chat page in a real browser: Debian's chromium driven by selenium (chromium-driver) loads the page
from a live `python -m scripts.rag_web` on 127.0.0.1, asks a question, and sees the answer arrive in pieces with
[n] linked to a listed source (title and snippet). The screenshot is kept as a test artifact:
test-artifacts/rag_web_chat.png (or $NANOCHAT_TEST_ARTIFACTS/).

    python -m pytest -q tests/test_rag_web_browser.py
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(chat_world):
    """scripts.rag_web serving the tiny RAG model on a free loopback port; stopped after the tests."""
    httpx = pytest.importorskip("httpx")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scripts.rag_web", "--knowledge_base", str(chat_world["kb"]), "--source", "rag",
           "--model_tag", "tiny", "--base_dir", str(chat_world["base"]), "--retriever_type", "simple",
           "--device", "cpu", "--port", str(port), "--max_tokens", "24"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail(f"rag_web exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("rag_web did not answer /health within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def cited_question(url, questions):
    """A test question the tiny model answers with a citation (asked through the API first)."""
    import httpx
    for q in questions:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": q}]}, timeout=60)
        assert r.status_code == 200, r.text
        if r.json()["citations"]:
            return q, r.json()
    pytest.fail("the tiny model cited no document for any test question")


def test_live_server_streams_over_http(live_server, chat_world):
    import httpx
    q, whole = cited_question(live_server, [x["question"] for x in chat_world["questions"][:20]])
    with httpx.stream("POST", live_server + "/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": q}], "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 3
    assert whole["choices"][0]["message"]["content"] in "".join(lines)  # the final chunk repeats the whole answer


@pytest.mark.slow
def test_page_in_chromium_asks_streams_and_links_sources(live_server, chat_world):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    q, whole = cited_question(live_server, [x["question"] for x in chat_world["questions"][:20]])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    artifacts = Path(os.environ.get("NANOCHAT_TEST_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(live_server + "/")
        assert "Ask your documents" in driver.page_source and "rag/tiny" in driver.page_source
        box = driver.find_element(By.ID, "question")
        box.send_keys(q)
        driver.find_element(By.ID, "ask").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "tokens in" in d.find_element(By.ID, "status").text)
        answer = driver.find_element(By.ID, "answer")
        assert answer.text == whole["choices"][0]["message"]["content"]  # the page shows the API's answer
        assert int(answer.get_attribute("data-pieces")) > 1  # it arrived in pieces, as streamed
        links = answer.find_elements(By.CSS_SELECTOR, "a.cite")
        assert links, "no [n] link in the answer"
        n = whole["citations"][0]["n"]
        link = [a for a in links if a.text == f"[{n}]"][0]
        assert link.get_attribute("href").endswith(f"#source-{n}")
        source = driver.find_element(By.ID, f"source-{n}")
        assert whole["citations"][0]["title"] in source.text and "cited" in source.get_attribute("class")
        assert source.find_element(By.CLASS_NAME, "snippet").text  # the snippet under the title
        link.click()
        assert driver.execute_script("return location.hash") == f"#source-{n}"
        shot = artifacts / "rag_web_chat.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
