"""Smoke test of an installed mmcam, as a new user meets it: run from an empty folder with the
Python of a venv where ``pip install "mmcam[app]"`` (or the built wheel with [app]) was done.

    VENV/bin/python .ci/smoke.py [--photo cat.png]   # makes its own empty folder

(``make smoke`` builds the wheel, makes the venv and runs it.)

It checks that mmcam comes from that venv (not a checkout), then runs ``mmcam --version``,
``python -m mmcam``, ``mmcam caption``, ``mmcam vqa`` and ``mmcam classify`` on a generated
scene and on a real photo, the README's library example, and ``mmcam demo``, which must come
up and answer one ``/caption`` request through gradio_client with the library's caption.
Any failure prints what failed and exits 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS: list[str] = []


def fail(message: str, output: str = "") -> None:
    print(f"smoke test FAILED: {message}\n{output[-4000:]}", file=sys.stderr, flush=True)
    sys.exit(1)


def ok(what: str) -> None:
    CHECKS.append(what)
    print(f"ok   {what}", flush=True)


def mmcam_cmd(*args: str, cwd: Path, timeout: int = 600) -> str:
    """Run the venv's ``mmcam`` console script; return its stdout (exit 0 and no traceback)."""
    exe = Path(sys.executable).parent / "mmcam"
    r = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0 or "Traceback" in r.stderr:
        fail(f"mmcam {' '.join(args)} exited {r.returncode}", r.stdout + r.stderr)
    return r.stdout


def explain_files(cwd: Path, *args: str, out: str) -> str:
    """One explaining command; its folder must hold the page and the grid."""
    stdout = mmcam_cmd(*args, "--out", out, cwd=cwd)
    for f in ("index.html", "grid.png", "result.json"):
        if not (cwd / out / f).is_file():
            fail(f"mmcam {' '.join(args)} wrote no {out}/{f}", stdout)
    ok(f"mmcam {' '.join(args)}")
    return stdout


def readme_examples(readme: Path) -> str:
    """The README's Python blocks that tests/test_readme.py runs (all but the fragments of a
    user's own code and the hub ids it lists), joined in order."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_readme import blocks, skipped

    code = [b for b in blocks(readme) if not skipped(b)]
    if not code:
        fail(f"{readme} has no python block to run")
    return "\n".join(code)


def default_photo() -> str:
    """scikit-image's chelsea.png: from this Python's scikit-image, else from the checkout's
    .venv (``make setup`` installs it there with the test extra)."""
    try:
        import skimage

        found = [Path(skimage.__file__).parent / "data" / "chelsea.png"]
    except ImportError:
        found = sorted(REPO.glob(".venv/lib/python*/site-packages/skimage/data/chelsea.png"))
    if not found or not found[0].is_file():
        fail("give --photo: no scikit-image photo found here or in the checkout's .venv")
    return str(found[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_app(work: Path, scene: Path, caption: str, wait_s: float) -> None:
    """``mmcam demo`` comes up and answers one /caption request with the library's caption."""
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(work / "demo.log", "w")  # noqa: SIM115 - closed in finally
    exe = Path(sys.executable).parent / "mmcam"
    proc = subprocess.Popen([str(exe), "demo", "--port", str(port)], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                fail(f"mmcam demo exited {proc.returncode}", (work / "demo.log").read_text())
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                fail(f"mmcam demo did not answer on {url} in {wait_s:.0f} s",
                     (work / "demo.log").read_text())
            time.sleep(1)
        ok(f"mmcam demo serves {url}")
        client = Client(url, verbose=False, download_files=str(work / "downloads"))
        api = client.view_api(print_info=False, return_format="dict")
        given = {}  # the image, an empty own caption; every other input at its default
        for p in api["named_endpoints"]["/caption"]["parameters"]:
            if p["component"] == "Image":
                given[p["parameter_name"]] = handle_file(str(scene))
            elif p["component"] == "Textbox" and not p["parameter_has_default"]:
                given[p["parameter_name"]] = ""
        status = client.predict(**given, api_name="/caption")[0]
        if f"**Caption:** {caption}" not in str(status):
            fail(f"the app's /caption answered {status!r}, the library {caption!r}")
        ok("the app answers /caption through gradio_client with the library's caption")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", default=None,
                   help="a real photo (default: scikit-image's chelsea.png, see default_photo)")
    p.add_argument("--readme", default=str(REPO / "README.md"),
                   help="the README whose library example is run")
    p.add_argument("--workdir", default=None, help="an empty folder to work in (default: new)")
    p.add_argument("--app-wait", type=float, default=240, help="seconds for the app to start")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mmcam-smoke-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        fail(f"{work} is not empty")
    os.chdir(work)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.pop("MMCAM_MODELS", None)

    import mmcam
    from mmcam import CaptionExplainer, scenes

    where = Path(mmcam.__file__).resolve()
    if where.is_relative_to(REPO):
        fail(f"mmcam is imported from the checkout ({where}), not from an installed package")
    ok(f"mmcam {mmcam.__version__} imported from {where.parent}")

    version = mmcam_cmd("--version", cwd=work).strip()
    if version != f"mmcam {mmcam.__version__}":
        fail(f"mmcam --version printed {version!r}")
    r = subprocess.run([sys.executable, "-m", "mmcam", "--help"], cwd=work, capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 or "caption" not in r.stdout:
        fail("python -m mmcam --help", r.stdout + r.stderr)
    ok("mmcam --version and python -m mmcam --help")

    photo_src = args.photo or default_photo()
    photo = work / ("photo" + Path(photo_src).suffix)
    shutil.copyfile(photo_src, photo)
    scene = work / "scene.png"
    scenes.generate(1, seed=31, start=5)[0].image.save(scene)

    out = explain_files(work, "caption", scene.name, out="cap_scene")
    caption = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(scene).caption
    if f"caption: {caption}" not in out:
        fail(f"mmcam caption printed another caption than the library's {caption!r}", out)
    explain_files(work, "caption", photo.name, out="cap_photo")
    explain_files(work, "vqa", scene.name, "what color is the circle?", out="vqa_scene")
    explain_files(work, "vqa", photo.name, "what shape is it?", "--contrast", "blue",
                  out="vqa_photo")
    explain_files(work, "classify", scene.name, "--model", "shapes-classifier", out="cls_scene")
    explain_files(work, "classify", photo.name, "--model", "shapes-classifier", out="cls_photo")
    explain_files(work, "classify", photo.name, "--model", "resnet18", "--top", "2",
                  out="cls_resnet")

    code = readme_examples(Path(args.readme))
    from PIL import Image

    Image.open(photo).convert("RGB").save(work / "photo.jpg")  # the name the README uses
    r = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        fail("the README's examples", r.stdout + r.stderr)
    if not (work / "out" / "index.html").is_file() or not (work / "out" / "mine").is_dir():
        fail("the README's examples wrote no out/index.html or out/mine")
    ok("the README's examples")

    check_app(work, scene, caption, args.app_wait)
    print(f"smoke test: all {len(CHECKS)} checks passed in {work}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
