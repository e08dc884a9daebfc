"""The HTML report opened in a real browser (headless Chromium), as a person would see it.

Needs the Debian packages chromium and chromium-driver (``.ci/setup-system``, which
``make test`` runs as root) and selenium (the dev extra); without them the test is skipped with
the command that installs them. Selenium talks to the system chromedriver directly: no
Selenium Manager, no download.
"""

import shutil
from pathlib import Path

import pytest
import torch

from nnzip.cli import main
from nnzip.evaluate import load_report
from nnzip.models import create_model, save_model

CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = ("install the Debian packages chromium and chromium-driver with "
           "`sudo .ci/setup-system` (or run `make test` as root), and selenium with "
           "`pip install -e '.[dev]'`")
WIDTH = 1280
FAST = ["--repeats", "3", "--robustness-samples", "100", "--no-progress"]


@pytest.fixture
def driver():
    """Headless Chromium at 1280 px, logging the console; skips (before any work) without it."""
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium missing: {INSTALL}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not CHROMEDRIVER.exists():
        pytest.skip(f"headless Chromium missing: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WIDTH},900", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    browser = webdriver.Chrome(options=options,
                               service=Service(executable_path=str(CHROMEDRIVER)))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def compressed_report(tmp_path_factory, digits, trained_mlp_state) -> Path:
    """A real `nnzip compress` of a trained LeNet-300-100 saved under a cache-style folder name:
    a baseline and two compressed stages, measured on scikit-learn's digits."""
    root = tmp_path_factory.mktemp("browser")
    model = create_model("lenet300", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    model.load_state_dict(trained_mlp_state)
    folder = save_model(model, root / "lenet300-digits-d785a6554558")
    recipe = root / "r.yaml"
    recipe.write_text("stages:\n  - prune: {sparsity: 0.8, finetune_epochs: 0}\n"
                      "  - quantize: {calibration_batches: 2}\n")
    threads = torch.get_num_threads()
    try:
        assert main(["compress", "--model", str(folder), "--recipe", str(recipe), "--data",
                     "digits", "--out", str(root / "out"), *FAST]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "out"


def test_compress_names_rows_by_architecture_and_data_not_folder(compressed_report):
    names = {m["name"] for m in load_report(compressed_report)["models"]}
    assert names == {"LeNet-300-100 (8×8 digits)"}


def test_report_renders_in_headless_chromium(driver, compressed_report, tmp_path):
    from selenium.webdriver.common.by import By

    models = load_report(compressed_report)["models"]
    driver.get((compressed_report / "report.html").as_uri())
    gains = driver.find_element(By.CSS_SELECTOR, "#gains table")
    assert len(gains.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(models) == 3
    # The first table fits a 1280-px window: no horizontal scrolling.
    width, client = driver.execute_script(
        "const e = document.getElementById('gains'); return [e.scrollWidth, e.clientWidth];")
    assert 0 < width <= client, (width, client)
    page_width = driver.execute_script("return document.documentElement.scrollWidth")
    assert page_width <= WIDTH
    # Every measurement is still there, folded below.
    full = driver.find_element(By.CSS_SELECTOR, "#all-measurements table")
    assert len(full.find_elements(By.CSS_SELECTOR, "tbody tr")) == 3
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 3  # trade-off, metrics, robustness
    sizes = [driver.execute_script("return [arguments[0].naturalWidth, "
                                   "arguments[0].naturalHeight, arguments[0].complete]", img)
             for img in images]
    assert all(w > 0 and h > 0 and done for w, h, done in sizes), sizes
    alts = [img.get_attribute("alt") for img in images]
    assert alts[:2] == ["Trade-off", "Metrics"]
    # The trade-off plot is on the first screen, just under the table.
    top = driver.execute_script("return arguments[0].getBoundingClientRect().top", images[0])
    assert top < 900
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert driver.save_screenshot(str(tmp_path / "first-screen.png"))
    assert (tmp_path / "first-screen.png").stat().st_size > 10_000


def test_long_model_and_stage_names_still_fit_the_first_table(driver, compressed_report,
                                                              tmp_path):
    from selenium.webdriver.common.by import By

    from nnzip.evaluate import build_report, write_report

    report = load_report(compressed_report)
    names = ["lenet5-deep-compression-huffman-encoded-with-a-very-long-file-name.nnz",
             "ResNet-20 (MNIST) channel pruned by half then quantized to int8 static"]
    models = [{**model, "name": name, "stage": f"{model['stage']}-unstructured-92pct-kmeans-5bit"}
              for model in report["models"] for name in names]
    write_report(build_report(models, report["machine"]), tmp_path)
    driver.get((tmp_path / "report.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#gains table tbody tr")
    assert len(rows) == 6
    width, client = driver.execute_script(
        "const e = document.getElementById('gains'); return [e.scrollWidth, e.clientWidth];")
    assert 0 < width <= client, (width, client)


def test_search_report_renders_its_front_first_in_headless_chromium(driver, tiny_search,
                                                                    tmp_path):
    """The report a real 4-trial search wrote (tests/conftest.py): the front table and the
    front plot on the first screen, every image decoded, no console error, no scrolling."""
    import json

    from selenium.webdriver.common.by import By

    _, _, out, _ = tiny_search
    summary = json.loads((out / "front.json").read_text())
    driver.get((out / "report.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#front table tbody tr")
    first_cells = [row.find_element(By.TAG_NAME, "td").text for row in rows]
    assert first_cells[0] == "baseline"
    assert sorted(map(int, first_cells[1:])) == sorted(summary["front"])
    trials = driver.find_elements(By.CSS_SELECTOR, "#all-trials table tbody tr")
    assert len(trials) == len(summary["trials"])  # folded, but in the page
    width, client = driver.execute_script(
        "const e = document.getElementById('front'); return [e.scrollWidth, e.clientWidth];")
    assert 0 < width <= client, (width, client)
    assert driver.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    images = driver.find_elements(By.TAG_NAME, "img")
    assert [img.get_attribute("alt") for img in images][:2] == ["Search front", "Metrics"]
    sizes = [driver.execute_script("return [arguments[0].naturalWidth, "
                                   "arguments[0].naturalHeight, arguments[0].complete]", img)
             for img in images]
    assert all(w > 0 and h > 0 and done for w, h, done in sizes), sizes
    top = driver.execute_script("return arguments[0].getBoundingClientRect().top", images[0])
    assert top < 900  # the front plot starts on the first screen, under its table
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert driver.save_screenshot(str(tmp_path / "search-first-screen.png"))
