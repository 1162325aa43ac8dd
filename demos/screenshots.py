"""Screenshots of the app's three tabs for the README, taken in headless Debian Chromium.

    python demos/screenshots.py [--out docs] [--port 0]

Launches the app on the shipped models (127.0.0.1, a free port), drives it with Playwright
(``/usr/bin/chromium``; no browser download) as a person would, and writes
``app_captioning.png``, ``app_vqa.png`` and ``app_classify.png``. Requests to anything but
the local server are blocked and reported, so the screenshots also prove the app is offline.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmcam

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick(page: Any, elem_id: str, option: str | int | Callable[[list[str]], str] = 0) -> str:
    """Open dropdown ``elem_id`` and click an option: its label, its position, or the label
    a function chooses from all the labels."""
    page.click(f"#{elem_id} input")
    items = page.locator(f"#{elem_id} li[role=option]")
    items.first.wait_for(timeout=TIMEOUT_MS)
    if callable(option):
        option = option([x.get_attribute("aria-label") or "" for x in items.all()])
    item = items.nth(option) if isinstance(option, int) else page.locator(
        f'#{elem_id} li[aria-label="{option}"]')
    label = item.get_attribute("aria-label") or ""
    item.click()
    return label


def richest_scene(one_large: bool = False) -> Callable[[list[str]], str]:
    """Chooses the scene entry with the most objects (the most telling screenshot)."""
    from mmcam.app import make_scene

    def choose(labels: list[str]) -> str:
        scenes = [lab for lab in labels if lab.startswith("scene ")]
        return max(scenes,
                   key=lambda lab: len(make_scene(int(lab.split()[1]), one_large).objects))

    return choose


def image_src(page: Any, elem_id: str) -> str:
    """The ``src`` of the image shown in component ``elem_id`` ('' if none)."""
    loc = page.locator(f"#{elem_id} img")
    return (loc.first.get_attribute("src") or "") if loc.count() else ""


def wait_src_change(page: Any, elem_id: str, old: str) -> str:
    """Wait until the image in ``elem_id`` has a src other than ``old``; return it."""
    page.wait_for_function(
        "([id, old]) => { const i = document.querySelector('#' + id + ' img');"
        " return i && i.getAttribute('src') && i.getAttribute('src') !== old"
        " && i.complete && i.naturalWidth > 0; }",
        arg=[elem_id, old], timeout=TIMEOUT_MS)
    return image_src(page, elem_id)


def wait_text(page: Any, elem_id: str, text: str) -> str:
    """Wait until component ``elem_id`` shows ``text``; return its whole text."""
    page.locator(f"#{elem_id}").get_by_text(text).first.wait_for(timeout=TIMEOUT_MS)
    return page.inner_text(f"#{elem_id}")


def open_browser(playwright: Any) -> Any:
    """Headless Debian Chromium (Playwright gives it a fresh temporary profile)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)


def offline_only(page: Any, base: str, blocked: list[str]) -> None:
    """Abort every request that does not go to ``base`` and record it in ``blocked``."""

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(base) or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    page.route("**/*", route)


def shoot(url: str, out: Path) -> list[str]:
    """Drive the three tabs at ``url`` and write the screenshots; return blocked URLs."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    blocked: list[str] = []
    with sync_playwright() as p:
        browser = open_browser(p)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        offline_only(page, url.rstrip("/"), blocked)
        page.goto(url)
        page.wait_for_selector("#cap_run", timeout=TIMEOUT_MS)

        # captioning: a scene, its caption, a color or shape word clicked, boxes on
        from mmcam.scenes import COLORS, SHAPES

        pick(page, "cap_sample", richest_scene())
        wait_src_change(page, "cap_image", "")
        page.click("#cap_run")
        page.locator("#cap_words label").first.wait_for(timeout=TIMEOUT_MS)
        old = wait_src_change(page, "cap_word_map", "")
        words = page.locator("#cap_words label")
        texts = [w.strip() for w in words.all_inner_texts()]
        named = [i for i, w in enumerate(texts) if w in COLORS or w in SHAPES]
        words.nth(named[0] if named else len(texts) - 1).click()
        if (named[0] if named else len(texts) - 1) != 0:
            wait_src_change(page, "cap_word_map", old)
        page.check("#cap_box input")
        page.check("#cap_gt input")
        page.check("#cap_own input")  # confident words have faint maps on the shared scale
        page.wait_for_timeout(800)
        page.screenshot(path=str(out / "app_captioning.png"), full_page=True)

        # VQA: a scene, its first question, the answers, a contrast
        page.click("#tab_vqa-button")
        page.wait_for_selector("#vqa_run", state="visible", timeout=TIMEOUT_MS)
        pick(page, "vqa_sample", richest_scene())
        wait_src_change(page, "vqa_image", "")
        page.check("#vqa_own input")
        page.click("#vqa_run")
        wait_text(page, "vqa_answer", "Answer:")
        wait_src_change(page, "vqa_map", "")
        page.click("#vqa_contrast_run")
        wait_src_change(page, "vqa_contrast_map", "")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "app_vqa.png"), full_page=True)

        # classification: a one-large-object scene, its top classes, Guided Grad-CAM
        page.click("#tab_classify-button")
        page.wait_for_selector("#cls_run", state="visible", timeout=TIMEOUT_MS)
        pick(page, "cls_sample", richest_scene(one_large=True))
        wait_src_change(page, "cls_image", "")
        page.click("#cls_run")
        page.locator("#cls_top label").first.wait_for(timeout=TIMEOUT_MS)
        wait_src_change(page, "cls_guided", "")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "app_classify.png"), full_page=True)
        browser.close()
    return blocked


def main(argv: list[str] | None = None, app: Any = None) -> int:
    """Launch the app (shipped models unless ``app`` is given) and take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from mmcam.app import launch

    port = args.port or free_port()
    app = launch(port=port, app=app, block=False)
    try:
        blocked = shoot(f"http://127.0.0.1:{port}/", Path(args.out))
    finally:
        app.close()
    for name in ("app_captioning.png", "app_vqa.png", "app_classify.png"):
        print(f"wrote {Path(args.out) / name}")
    if blocked:
        print(f"blocked {len(blocked)} requests to other hosts: {blocked[:5]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
