"""fcnseg serve's page in headless Chromium (Debian's chromium + chromium-driver, selenium):
upload a picture through the file input, wait for the overlay, move the opacity slider,
hover a pixel, check the legend's class names, download the label PNG and compare it with
the API's. FCNSEG_SCREENSHOT=path saves the page (README's picture)."""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import photo, running, wait_until

from fcnseg import build_model
from fcnseg.serve import Limits, ServedModel, Service

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
VOC_PHOTO = Path("/usr/share/doc/labelme-examples/examples/semantic_segmentation/"
                 "data_dataset_voc/JPEGImages/2011_000025.jpg")  # fmt: skip
NAMES = ["background", "sky", "tree", "road", "car", "person"]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    pytest.skip(f"{CHROMIUM} or {DRIVER} is absent: apt-get install chromium chromium-driver",
                allow_module_level=True)  # fmt: skip


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service as DriverService

    root = tmp_path_factory.mktemp("chromium")
    downloads = root / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={root / 'profile'}", "--window-size=1280,900"):  # fmt: skip
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(options=opts, service=DriverService(DRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})  # fmt: skip
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def test_page_uploads_overlays_hovers_and_downloads_the_api_png(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    torch.manual_seed(0)
    model = build_model("fcn32s_vgg16", num_classes=6, width=0.0625)
    with torch.no_grad():  # a random score layer over the built trunk: regions, not noise
        model.score_fr.weight.normal_(0, 0.5)
    model.class_names = NAMES
    picture = tmp_path / "street.png"
    if VOC_PHOTO.exists():  # a real photo for the README's picture
        shutil.copy(VOC_PHOTO, picture.with_suffix(".jpg"))
        picture = picture.with_suffix(".jpg")
    else:
        Image.fromarray(photo(120, 160)).save(picture)
    service = Service({"street": ServedModel("street", model.eval(), torch.device("cpu"))},
                      Limits())  # fmt: skip
    with running(service) as base:
        api = httpx.post(f"{base}/predict", files={"image": ("p", picture.read_bytes())})
        assert api.status_code == 200
        truth = np.array(Image.open(io.BytesIO(api.content)))
        summary = httpx.post(f"{base}/predict", files={"image": ("p", picture.read_bytes())},
                             headers={"Accept": "application/json"}).json()  # fmt: skip
        present = {c["name"] for c in summary["outputs"]["labels"]["classes"]}
        assert len(present) > 1

        d = browser
        d.get(base + "/")
        wait_until(lambda: d.find_elements(By.CSS_SELECTOR, "#model option"), what="models")
        d.find_element(By.ID, "file").send_keys(str(picture))
        overlay = d.find_element(By.ID, "overlay")
        wait_until(lambda: overlay.get_attribute("data-ready") == "1", what="the overlay")
        assert int(overlay.get_attribute("width")) == truth.shape[1]

        slider = d.find_element(By.ID, "opacity")
        slider.send_keys(*[Keys.ARROW_LEFT] * 10)  # 60 -> 50
        assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.5)
        assert d.find_element(By.ID, "opacity-value").text == "50 %"

        ActionChains(d).move_to_element_with_offset(overlay, 7, -5).perform()
        text = d.find_element(By.ID, "hover").text
        m = re.fullmatch(r"\((\d+), (\d+)\) (\w+) ([\d.]+) %", text)
        assert m, text
        x, y, name, prob = int(m[1]), int(m[2]), m[3], float(m[4])
        assert name == NAMES[truth[y, x]] and 100 / len(NAMES) - 1 < prob <= 100

        legend = [r.find_elements(By.TAG_NAME, "td")[1].text
                  for r in d.find_elements(By.CSS_SELECTOR, "#legend tbody tr")]  # fmt: skip
        assert set(legend) == present and len(legend) == len(present)

        d.find_element(By.ID, "download").click()
        target = d.downloads / f"{picture.stem}.png"
        wait_until(target.exists, what="the download")
        time.sleep(0.2)
        assert target.read_bytes() == api.content

        shot = os.environ.get("FCNSEG_SCREENSHOT")
        d.save_screenshot(shot or str(tmp_path / "page.png"))
