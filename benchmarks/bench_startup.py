"""Wall time of whole ``mmcam`` commands, start-up included, as a user at a shell sees them.

    python benchmarks/bench_startup.py [--runs 5] [--mmcam PATH] [--only LABEL ...]
        [--out benchmarks/results]

Each command is started ``--runs`` times after one warm-up run that is not counted (it fills
the disk cache), from a fresh temporary folder holding a generated scene and a 512 px photo
(scikit-image's astronaut, 512x512): ``mmcam --help``, ``mmcam --version``,
``python -c "import mmcam"``, ``python -c "import torch"`` (what every command that
explains pays first), ``mmcam caption``, ``mmcam vqa`` and ``mmcam classify``
(shapes-classifier) on the scene, and ``mmcam caption`` on the photo (issue 11's "caption
with all outputs for a 512 px photo in <= 3 s"), each writing its ``--out`` folder.
``--only`` runs the commands whose label contains one of the given strings.
Per command: wall seconds (a monotonic clock around the child process) and CPU seconds
(user + system of the finished child), as min / median / max over the runs, with the
1-minute load average before and after. ``OMP_NUM_THREADS`` is left as the caller set it.
Writes ``startup.json`` and prints a table. Other processes on the machine slow every figure
down: quote the median with the load beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmcam


def commands(mmcam: str) -> dict[str, list[str]]:
    """Label -> argv; ``{out}`` is replaced by a fresh folder for each run."""
    return {
        "mmcam --help": [mmcam, "--help"],
        "mmcam --version": [mmcam, "--version"],
        "python -c 'import mmcam'": [sys.executable, "-c", "import mmcam"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],  # the floor
        "mmcam caption scene.png": [mmcam, "caption", "scene.png", "--out", "{out}"],
        "mmcam vqa scene.png 'what color is the circle?'": [
            mmcam, "vqa", "scene.png", "what color is the circle?", "--out", "{out}"],
        "mmcam classify scene.png --model shapes-classifier": [
            mmcam, "classify", "scene.png", "--model", "shapes-classifier", "--out", "{out}"],
        "mmcam caption photo512.png": [mmcam, "caption", "photo512.png", "--out", "{out}"],
    }


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv``; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def photo(path: Path) -> None:
    """scikit-image's astronaut (512x512 RGB) written to ``path``."""
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()).save(path)


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 3), "median": round(statistics.median(xs), 3),
            "max": round(max(xs), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--mmcam", default=str(Path(sys.executable).parent / "mmcam"),
                   help="the mmcam console script (default: the one beside this Python)")
    p.add_argument("--only", nargs="+", default=None,
                   help="run only the commands whose label contains one of these")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    mmcam = shutil.which(args.mmcam) or args.mmcam
    from mmcam import __version__, scenes

    work = Path(tempfile.mkdtemp(prefix="mmcam-startup-"))
    scenes.generate(1, seed=31, start=5)[0].image.save(work / "scene.png")
    photo(work / "photo512.png")
    rows = {}
    todo = {k: v for k, v in commands(mmcam).items()
            if not args.only or any(o in k for o in args.only)}
    try:
        for label, argv in todo.items():
            walls, cpus, load0 = [], [], os.getloadavg()[0]
            for i in range(args.runs + 1):
                out = work / f"out{i}"
                w, c = timed([a.replace("{out}", str(out)) for a in argv], work)
                shutil.rmtree(out, ignore_errors=True)
                if i:  # run 0 warms the disk cache
                    walls.append(w)
                    cpus.append(c)
            rows[label] = {"wall_s": spread(walls), "cpu_s": spread(cpus),
                           "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
            r = rows[label]
            print(f"{label:52s} wall {r['wall_s']['median']:6.2f} s "
                  f"(min {r['wall_s']['min']:.2f}, max {r['wall_s']['max']:.2f})  "
                  f"cpu {r['cpu_s']['median']:6.2f} s  load {r['load_1min']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short",
                             "HEAD"], capture_output=True, text=True).stdout.strip()
    for r in rows.values():
        r.update(commit=commit, when=time.strftime("%Y-%m-%d %H:%M:%S"), runs=args.runs)
    report = {
        "what": "whole-process wall and CPU seconds (user+system) of mmcam commands, "
                "runs after 1 warm-up, min/median/max; each row says its commit, time, runs "
                "and 1-minute load before/after",
        "mmcam": __version__, "command": " ".join([Path(sys.executable).name] + sys.argv),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "commands": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    old = out / "startup.json"
    if args.only and old.is_file():  # a subset: the other rows stay as they were
        report["commands"] = {**json.loads(old.read_text())["commands"], **rows}
    old.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'startup.json'}")


if __name__ == "__main__":
    main()
