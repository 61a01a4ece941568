"""Open a `snakemake --report` page in headless Chromium, show every figure it holds, and keep a screenshot of each.

    snakemake --report report.html && python -m bench.report_screenshots --report report.html --output docs/img/report

The report is a JavaScript page: a figure is only drawn once its category is opened and its eye icon clicked,
so a file listing cannot tell whether the page works. This walks it as a person would (every category in the
sidebar's RESULTS, every .png in it) and fails when a category or a figure cannot be opened. Needs selenium,
chromium and chromedriver (Debian: apt-get install chromium chromium-driver), as the web-chat browser test does.
"""
import shutil
import sys
import time
from pathlib import Path

from nanochat.cli import ArgumentParser


def driver(width: int, height: int):
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def open_category(d, url: str, category: str, wait: float):
    from selenium.webdriver.common.by import By
    d.get(url)
    time.sleep(wait)
    d.find_element(By.XPATH, f"//*[text()='{category}']").click()
    time.sleep(wait / 2)


def main(argv=None) -> int:
    p = ArgumentParser(description="screenshots of every figure in a snakemake --report page, headless Chromium")
    p.add_argument("--report", required=True, help="the report .html written by snakemake --report")
    p.add_argument("--output", required=True, help="folder for the screenshots (one .png per figure)")
    p.add_argument("--categories", default="Answers,Metrics,Retrieval", help="report categories to open")
    p.add_argument("--wait", type=float, default=2.0, help="seconds for the page to draw after each click")
    args = p.parse_args(argv)
    from selenium.webdriver.common.by import By
    url = Path(args.report).resolve().as_uri()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    d, saved = driver(1500, 960), []
    try:
        for category in args.categories.split(","):
            open_category(d, url, category, args.wait)
            figures = [e.text for e in d.find_elements(By.XPATH, "//td") if e.text.strip().endswith(".png")]
            if not figures:
                print(f"FAIL: category {category} lists no figure")
                return 1
            for name in figures:
                open_category(d, url, category, args.wait)
                row = d.find_element(By.XPATH, f"//td[text()='{name}']/..")
                row.find_elements(By.XPATH, ".//*[name()='svg' or self::a or self::button]")[0].click()
                time.sleep(args.wait)
                shown = d.find_elements(By.XPATH, "//img[@src]")
                if not shown:
                    print(f"FAIL: {name} did not open")
                    return 1
                path = out / Path(name).name
                d.save_screenshot(str(path))
                saved.append(path)
                print(f"{category:<10} {name:<45} -> {path}")
    finally:
        d.quit()
    print(f"PASS: {len(saved)} figures opened and saved under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
