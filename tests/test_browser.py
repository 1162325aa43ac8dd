"""The app in a real browser: headless Debian Chromium (/usr/bin/chromium) driven by Playwright.

Load the page, pick a sample, make a caption, click a word and see the shown map change;
compare that word side by side at an earlier layer; explain the caption at that layer with
the layer picker; ask a VQA question and see the library's answer; close the page and see
the session's results given back. Requests to any host but the local app are
blocked and must not happen (the app works offline). Skipped only when Chromium is missing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from app_helpers import adapters, served

from mmcam import registry, scenes
from mmcam.app import SCENE_SEED, Session
from mmcam.vqa import VQAExplainer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    # gradio's queue calls a pandas option deprecated in pandas 3: not ours to fix
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def pick(page, elem_id: str, index: int) -> str:
    """Open a dropdown and click its ``index``-th option; return the option's label."""
    page.click(f"#{elem_id} input")
    option = page.locator(f"#{elem_id} li[role=option]").nth(index)
    option.wait_for(timeout=WAIT_MS)
    label = option.get_attribute("aria-label")
    option.click()
    return label


def shown_src(page, elem_id: str, old: str = "") -> str:
    """Wait for a loaded image in ``elem_id`` whose src differs from ``old``; return it."""
    page.wait_for_function(
        "([id, old]) => { const i = document.querySelector('#' + id + ' img');"
        " return i && i.getAttribute('src') && i.getAttribute('src') !== old"
        " && i.complete && i.naturalWidth > 0; }",
        arg=[elem_id, old], timeout=WAIT_MS)
    return page.locator(f"#{elem_id} img").first.get_attribute("src")


def sessions(app) -> list[Session]:
    """The app's live sessions (gradio's state holder)."""
    return [v for sd in list(app.state_holder.session_data.values())
            for v in list(sd.state_data.values()) if isinstance(v, Session)]


def test_caption_word_click_and_vqa_in_chromium():
    from playwright.sync_api import sync_playwright

    models = adapters()
    with served(models) as (url, _, app), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            elsewhere: list[str] = []

            def route(r):
                if r.request.url.startswith(url.rstrip("/")) or r.request.url.startswith(
                        ("data:", "blob:")):
                    r.continue_()
                else:
                    elsewhere.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(url)
            page.wait_for_selector("#cap_run", timeout=WAIT_MS)

            # captioning: a scene sample, its caption, then a click on another word
            pick(page, "cap_sample", 0)
            shown_src(page, "cap_image")
            page.click("#cap_run")
            words = page.locator("#cap_words label")
            words.first.wait_for(timeout=WAIT_MS)
            assert "Caption:" in page.inner_text("#cap_status")
            before = shown_src(page, "cap_word_map")
            before_bytes = page.request.get(before).body()
            assert words.count() >= 2
            words.nth(words.count() - 1).click()
            after = shown_src(page, "cap_word_map", before)
            after_bytes = page.request.get(after).body()
            assert after_bytes != before_bytes
            info = page.inner_text("#cap_word_info")
            assert f"word {words.count()} of {words.count()}" in info

            # side by side: the clicked word under B (an earlier layer, Grad-CAM)
            page.locator("#cmp").get_by_text("Side by side").click()
            rec = registry.read_recommendation(getattr(models["captioner"], "folder", None))
            i = 2 if rec and rec["layer"] else 1  # past "<recommended>" and "<default>"
            layer = pick(page, "cmp_layer", i)
            assert layer == registry.layer_choices(models["captioner"])[1]
            page.click("#cmp_run")
            shown_src(page, "cmp_b")
            shown_src(page, "cmp_a")
            page.locator("#cmp_info").get_by_text("cosine similarity").wait_for(
                timeout=WAIT_MS)
            cmp = page.inner_text("#cmp_info")
            assert f"B = Grad-CAM, log p (the paper), layer {layer}" in cmp
            assert cmp.startswith(f"{words.nth(words.count() - 1).inner_text().strip()}: A = ")

            # the layer picker: the caption explained at an earlier layer
            assert pick(page, "cap_layer", i) == layer
            page.click("#cap_run")
            page.locator("#cap_status").get_by_text(f"layer {layer}").wait_for(timeout=WAIT_MS)
            page.wait_for_function(  # the old caption's side-by-side view is cleared
                "() => !document.querySelector('#cmp_b img')", timeout=WAIT_MS)
            assert page.inner_text("#cmp_info").strip() == ""

            # VQA: a scene sample fills in one of its questions; the answer is the library's
            page.click("#tab_vqa-button")
            page.wait_for_selector("#vqa_run", state="visible", timeout=WAIT_MS)
            label = pick(page, "vqa_sample", 0)
            shown_src(page, "vqa_image")
            box = "#vqa_question textarea, #vqa_question input"
            page.wait_for_function("(sel) => document.querySelector(sel).value.length > 0",
                                   arg=box, timeout=WAIT_MS)
            question = page.input_value(box)
            page.click("#vqa_run")
            page.locator("#vqa_answer").get_by_text("Answer:").wait_for(timeout=WAIT_MS)
            shown_src(page, "vqa_map")
            scene = scenes.generate(1, SCENE_SEED, start=int(label.split()[1]))[0]
            assert question in [q for q, _ in scene.questions]
            lib = VQAExplainer(models["vqa"]).explain(scene.image, question)
            answer = re.search(r"Answer: (.+?) \(p = ", page.inner_text("#vqa_answer"))
            assert answer is not None and answer.group(1) == lib.answer
            assert page.locator("#vqa_top label").count() == len(lib.top_answers)
            assert elsewhere == []

            # closing the page gives the session's results and files back at once
            held = [x for x in sessions(app) if x.caption is not None]
            assert len(held) == 1
            folder = held[0].folder
            del held
            page.close()
            deadline = time.monotonic() + 30
            while any(x.caption is not None for x in sessions(app)) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert not any(x.caption is not None for x in sessions(app))
            assert not folder.exists()
        finally:
            browser.close()
