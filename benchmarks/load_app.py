"""The app under load: concurrent gradio_client users asking for captions and VQA answers.

    python benchmarks/load_app.py [--clients 8] [--requests 25] [--out benchmarks/results]

Starts the app as ``mmcam demo`` does (the shipped models, 127.0.0.1, a free port) in its own
process, then runs ``--clients`` clients at once, each with its own session, each sending
``--requests`` requests that alternate ``/caption`` and ``/vqa`` on images no other request uses
at the same time (fresh scenes, one of their own questions). Every answer is checked against the
library's answer for that image, computed here beforehand with the same model and method: the
same caption and words, the same answer and probability (to the 3 decimals shown); a request
that fails or differs is an error. Reports p50 and p95 latency (from the call to the last output
downloaded) per kind, the wall time, and the server's resident memory (RSS) before the load,
after it, and its peak. Other processes on the machine slow everything down: the 1-minute load
average is recorded with the numbers.
Writes ``app_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mmcam

SEED = 90_210_000  # scenes of this benchmark (far from the training and evaluation seeds)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of process ``pid`` now (VmRSS) and at its peak (VmHWM), in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(out["VmRSS"], 1), "peak_mb": round(out["VmHWM"], 1)}


def start_server(port: int, workers: int) -> subprocess.Popen:
    """The app (``mmcam.app.launch``, as ``mmcam demo`` runs it, with ``workers`` model
    workers) in its own process; returns once the page answers."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS="1")
    code = f"from mmcam.app import launch; launch(port={port}, workers={workers})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start within 300 s")


def expected(n_images: int, method: str, folder: Path) -> list[dict[str, Any]]:
    """The library's answers: per image, its file, caption and words, a question with its
    answer and probability."""
    from mmcam import load_model, scenes
    from mmcam.caption import CaptionExplainer
    from mmcam.registry import method_score
    from mmcam.vqa import VQAExplainer

    m, score = method_score(method)
    cap = CaptionExplainer(load_model("shapes-captioner"), method=m, score=score)
    vqa = VQAExplainer(load_model("shapes-vqa"), method=m, score=score)
    out = []
    for k, sc in enumerate(scenes.generate(n_images, SEED)):
        path = folder / f"scene_{k}.png"
        sc.image.save(path)
        c = cap.explain(sc.image)
        question = sc.questions[k % len(sc.questions)][0]
        a = vqa.explain(sc.image, question, top_k=5)
        out.append({"path": path, "caption": c.caption, "words": c.words,
                    "question": question, "answer": a.answer,
                    "probability": f"{a.probability:.3f}"})
    return out


def check(kind: str, out: Any, want: dict[str, Any]) -> str | None:
    """None when the app's reply is the library's, else what differs."""
    if kind == "caption":
        status, words = out[0], [w for w, _ in out[1]["choices"]]
        if not status.startswith(f"**Caption:** {want['caption']}  \n"):
            return f"caption {status[:80]!r}, library {want['caption']!r}"
        if words != want["words"]:
            return f"words {words}, library {want['words']}"
        return None
    head = f"**Answer: {want['answer']}** (p = {want['probability']})"
    return None if out[0].startswith(head) else f"answer {out[0][:60]!r}, library {head!r}"


def user(url: str, c: int, n: int, cases: list[dict[str, Any]], method: str, tmp: Path,
         log: list[dict[str, Any]]) -> None:
    """One client: ``n`` requests, alternating caption and VQA, each on its own image."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=str(tmp / f"client{c}"))
    for r in range(n):
        want = cases[(c * n + r) % len(cases)]
        kind = "caption" if (c + r) % 2 == 0 else "vqa"
        t = time.perf_counter()
        try:
            if kind == "caption":
                out = client.predict(handle_file(str(want["path"])), "", "shapes-captioner",
                                     method, 0.5, False, False, False, api_name="/caption")
            else:
                out = client.predict(handle_file(str(want["path"])), want["question"],
                                     "shapes-vqa", method, 0.5, False, False, api_name="/vqa")
            problem = check(kind, out, want)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            problem = f"{type(e).__name__}: {e}"[:300]
        log.append({"client": c, "kind": kind, "seconds": time.perf_counter() - t,
                    "error": problem})
    client.close()


def percentiles(times: list[float]) -> dict[str, float]:
    """p50, p95 and max in seconds."""
    s = sorted(times)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"n": len(s), "p50_s": round(statistics.median(s), 3), "p95_s": round(p95, 3),
            "max_s": round(s[-1], 3)}


def run(clients: int, requests: int, method: str, workers: int) -> dict[str, Any]:
    """Start the app, load it, stop it; the figures."""
    import gradio
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="mmcam-load-"))
    cases = expected(clients * requests // 2 + clients, method, tmp)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    load = {"before": os.getloadavg()[0]}
    proc = start_server(port, workers)
    try:
        warm: list[dict[str, Any]] = []
        user(url, 0, 2, cases[-2:], method, tmp, warm)  # one caption, one question
        memory = {"before": rss_mb(proc.pid)}
        log: list[dict[str, Any]] = []
        t = time.perf_counter()
        threads = [threading.Thread(target=user, args=(url, c, requests, cases, method, tmp,
                                                       log)) for c in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        memory["after"] = rss_mb(proc.pid)
        load["after"] = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    errors = [x for x in log + warm if x["error"]]
    return {
        "benchmark": "the app under load: concurrent gradio_client users, caption and VQA",
        "command": "python benchmarks/load_app.py " + " ".join(sys.argv[1:]),
        "clients": clients, "requests_per_client": requests, "method": method,
        "model_workers": workers, "requests": len(log), "errors": len(errors),
        "error_examples": errors[:5], "wall_s": round(wall, 1),
        "requests_per_s": round(len(log) / wall, 2),
        "latency": {"all": percentiles([x["seconds"] for x in log]),
                    **{k: percentiles([x["seconds"] for x in log if x["kind"] == k])
                       for k in ("caption", "vqa")}},
        "server_memory": memory, "load_average_1min": load,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "gradio": gradio.__version__,
                    "processor": platform.processor() or platform.machine()},
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    from mmcam.registry import RECOMMENDED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--method", default=RECOMMENDED, help="method[:score], as the app")
    parser.add_argument("--workers", type=int, default=2, help="the app's model workers")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    result = run(args.clients, args.requests, args.method, args.workers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "app_load.json").write_text(json.dumps(result, indent=2) + "\n")
    lat, mem = result["latency"], result["server_memory"]
    print(f"{result['requests']} requests from {args.clients} clients, {result['errors']} "
          f"errors, {result['wall_s']} s ({result['requests_per_s']} requests/s); load "
          f"average {result['load_average_1min']['before']:.1f} before, "
          f"{result['load_average_1min']['after']:.1f} after")
    for k in ("all", "caption", "vqa"):
        print(f"  {k:8s} p50 {lat[k]['p50_s']:.2f} s  p95 {lat[k]['p95_s']:.2f} s  "
              f"max {lat[k]['max_s']:.2f} s  (n = {lat[k]['n']})")
    print(f"  server RSS {mem['before']['rss_mb']:.0f} MB before, {mem['after']['rss_mb']:.0f} "
          f"MB after, peak {mem['after']['peak_mb']:.0f} MB")
    print(f"wrote {out / 'app_load.json'}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
