"""Packaging: the wheel and sdist carry the shipped models, installs find them from any folder,
extras stay optional with one clear line when missing, and start-up imports stay light.

Installs are made into temporary folders and run in subprocesses from an empty working
directory, so nothing here can see the checkout by accident.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import mmcam
from mmcam.models.hub import KNOWN_MODELS

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SITE = sysconfig.get_paths()["purelib"]  # this venv's packages: torch, numpy, ...


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def repo_models() -> dict[str, str]:
    """Every file under the repository's models/, as "name/file" -> sha256 (the oracle)."""
    return digests({str(f.relative_to(MODELS)): f.read_bytes()
                    for f in MODELS.rglob("*") if f.is_file() and "__pycache__" not in f.parts})


def run(code: str, cwd: Path, *, pythonpath: str | None = None, no_site: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in ``cwd`` (``-S``: no site, so no editable finder
    of this venv)."""
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MMCAM_MODELS")}
    full.update(env or {}, OMP_NUM_THREADS="1")
    if pythonpath:
        full["PYTHONPATH"] = pythonpath
    args = [sys.executable] + (["-S"] if no_site else []) + ["-c", code]
    return subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel built from it, as CI builds them (``python -m build``)."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("mmcam-*.whl")
    return wheel


def test_wheel_and_sdist_carry_every_shipped_model_file(dist):
    expected = repo_models()
    hf = {"shapes-blip", "shapes-blip-vqa"}
    assert {k.split("/")[0] for k in expected} >= set(KNOWN_MODELS) | hf
    with zipfile.ZipFile(wheel_of(dist)) as z:
        prefix = "mmcam/_shipped/"
        got = {n[len(prefix):]: z.read(n) for n in z.namelist() if n.startswith(prefix)}
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    assert digests(got) == expected
    (sdist,) = dist.glob("mmcam-*.tar.gz")
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        prefix = f"{top}/models/"
        got = {m.name[len(prefix):]: t.extractfile(m).read() for m in t.getmembers()
               if m.name.startswith(prefix) and m.isfile()}
    assert digests(got) == expected

    # the version comes from mmcam.__version__; the core install pulls neither gradio nor
    # transformers: each comes only with its extra
    lines = meta.decode().splitlines()
    assert f"Version: {mmcam.__version__}" in lines
    assert wheel_of(dist).name.startswith(f"mmcam-{mmcam.__version__}-")
    requires = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert core and not any(r.startswith(("gradio", "transformers")) for r in core)
    assert any(r.startswith("gradio") and 'extra == "app"' in r for r in requires)
    assert any(r.startswith("transformers") and 'extra == "hf"' in r for r in requires)


CHECK_MODELS = """
import json, os, sys
from pathlib import Path
import mmcam
from mmcam.models import hub
from safetensors.torch import load_file
repo = Path(sys.argv[1]) if len(sys.argv) > 1 else None
out = {"mmcam": mmcam.__file__, "shipped": str(hub.SHIPPED_MODELS), "same": {}}
for name in %r:
    adapter = mmcam.load_model(name)
    folder = hub.resolve(name)
    model = getattr(adapter, "model", None)
    state = load_file(os.path.join(%r, name, "model.safetensors"))
    own = {k: v for k, v in model.state_dict().items()}
    out["same"][name] = (str(folder), sorted(own) == sorted(state)
                         and all(bool((own[k] == state[k]).all()) for k in state))
if os.environ.get("MMCAM_MODELS"):
    out["extra"] = str(hub.resolve("my-captioner"))
    out["first"] = str(hub.resolve("shapes-captioner"))
print(json.dumps(out))
"""


def check_models(cwd: Path, **kw) -> dict:
    r = run(CHECK_MODELS % (KNOWN_MODELS, str(MODELS)), cwd, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_wheel_install_loads_shipped_models_from_any_folder(dist, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(target), str(wheel_of(dist))], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    # MMCAM_MODELS adds a folder, searched before the shipped one
    extra = tmp_path / "more"
    for name in ("my-captioner", "shapes-captioner"):
        (extra / name).mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            (extra / name / f).write_bytes((MODELS / "shapes-captioner" / f).read_bytes())
    out = check_models(empty, pythonpath=str(target), env={"MMCAM_MODELS": str(extra)})
    shipped = target / "mmcam" / "_shipped"
    assert Path(out["mmcam"]).is_relative_to(target)
    assert Path(out["shipped"]) == shipped
    for name in KNOWN_MODELS:
        folder, same = out["same"][name]
        assert same, name  # the installed weights are the repository's
        if name != "shapes-captioner":
            assert Path(folder) == shipped / name
    assert Path(out["extra"]) == extra / "my-captioner"
    assert Path(out["first"]) == extra / "shapes-captioner"

    # python -m mmcam works from the installed package
    r = run("import runpy, sys; sys.argv = ['mmcam', '--version']; "
            "runpy.run_module('mmcam', run_name='__main__')", empty, pythonpath=str(target))
    assert r.stdout.strip() == f"mmcam {mmcam.__version__}", r.stderr[-2000:]


def test_editable_install_loads_shipped_models_from_any_folder(tmp_path):
    """An editable install (``pip install -e``, what ``make setup`` does) of a copy of the
    source tree finds the models in that copy's models/ folder. The editable wheel comes from
    setuptools' PEP 660 hook, as pip gets it, and is unpacked into a folder of its own (pip
    itself would replace this venv's install); the interpreter runs with ``-S`` so this venv's
    editable install of the checkout is not in the way."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    for folder in ("mmcam", "models"):
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                (src / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                (src / f.relative_to(ROOT)).write_bytes(f.read_bytes())
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    r = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                        f"print(build_meta.build_editable({str(wheels)!r}))"],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheels / r.stdout.strip().splitlines()[-1]) as z:
        z.extractall(site)
    assert list(site.glob("__editable__*mmcam*.pth"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code = (f"import site, sys; site.addsitedir({str(site)!r}); sys.path.append({SITE!r})\n"
            + CHECK_MODELS % (KNOWN_MODELS, str(MODELS)))
    r = run(code, empty, no_site=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(out["mmcam"]).is_relative_to(src / "mmcam")
    assert Path(out["shipped"]) == src / "models"
    for name in KNOWN_MODELS:
        folder, same = out["same"][name]
        assert same and Path(folder) == src / "models" / name


# ------------------------------------------------------------------ extras


def without(module: str, code: str) -> str:
    """``code`` run as if ``module`` were not installed (its import raises ImportError)."""
    return f"import sys; sys.modules[{module!r}] = None\n{code}"


def cli_lines(code_args: list[str], hide: str, cwd: Path) -> tuple[int, list[str]]:
    code = without(hide, f"from mmcam.cli import main; sys.exit(main({code_args!r}))")
    r = run(code, cwd)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.returncode, r.stderr.strip().splitlines()


def test_missing_gradio_is_one_line_naming_the_install(tmp_path):
    rc, lines = cli_lines(["demo", "--port", "0"], "gradio", tmp_path)
    assert rc == 2
    assert lines == ["mmcam demo: error: the app needs gradio: pip install 'mmcam[app]'"]


def test_missing_transformers_is_one_line_naming_the_install(tmp_path):
    from mmcam import scenes

    scenes.generate(1, seed=3)[0].image.save(tmp_path / "scene.png")
    message = "Hugging Face models need transformers: pip install 'mmcam[hf]'"
    rc, lines = cli_lines(["caption", "scene.png", "--model", "hf:Salesforce/blip-image-"
                           "captioning-base", "--out", "o"], "transformers", tmp_path)
    assert (rc, lines) == (2, [f"mmcam caption: error: {message}"])
    assert not (tmp_path / "o").exists()
    rc, lines = cli_lines(["train", "blip-captioner", "--out", "o"], "transformers", tmp_path)
    assert (rc, lines) == (2, ["mmcam train: error: training blip-captioner needs "
                               "transformers: pip install 'mmcam[hf]'"])
    # the library: a hub id and the shipped HF-format folder (shapes-blip) say the same
    code = without("transformers", """
import mmcam
for name in ("hf:Salesforce/blip-image-captioning-base", "shapes-blip"):
    try:
        mmcam.load_model(name)
    except mmcam.MMCamError as e:
        print(e)
""")
    r = run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines() == [message, message]


# ------------------------------------------------------------------ start-up

HEAVY = ("torch", "torchvision", "gradio", "transformers", "matplotlib", "numpy", "PIL",
         "nltk", "scipy", "pandas")

LOADED = """
import json, sys
{body}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def loaded(body: str, cwd: Path) -> set[str]:
    r = run(LOADED.format(body=body), cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return set(json.loads(r.stdout.strip().splitlines()[-1])) & set(HEAVY)


def test_help_and_version_import_nothing_heavy(tmp_path):
    for args in (["--help"], ["--version"], ["caption", "--help"], ["demo", "--help"]):
        body = (f"from mmcam.cli import main\ntry:\n    main({args!r})\n"
                "except SystemExit:\n    pass")
        assert loaded(body, tmp_path) == set(), args
    assert loaded("import mmcam, mmcam.cli", tmp_path) == set()


def test_caption_vqa_classify_import_only_what_they_use(tmp_path):
    from mmcam import scenes

    scenes.generate(1, seed=3)[0].image.save(tmp_path / "scene.png")
    body = ("from mmcam.cli import main\n"
            "assert main(['caption', 'scene.png', '--out', 'c']) == 0\n"
            "assert main(['vqa', 'scene.png', 'what color is the circle?', '--out', 'v']) == 0\n"
            "assert main(['classify', 'scene.png', '--model', 'shapes-classifier', "
            "'--out', 'k']) == 0")
    mods = loaded(body, tmp_path)
    assert "torch" in mods  # it did explain
    assert not mods & {"gradio", "transformers", "torchvision", "nltk", "scipy", "pandas",
                       "matplotlib"}, mods  # drawing and saving import no matplotlib
    for out in ("c", "v", "k"):
        assert (tmp_path / out / "index.html").is_file()


def test_treebank_tokens_equal_nltk():
    """mmcam's copy of the Treebank tokenizer (no nltk import at start-up) against nltk's."""
    import random

    from nltk.tokenize import TreebankWordTokenizer

    from mmcam import scenes
    from mmcam.models.text import tokenize, treebank_tokens

    texts = ["", "   ", "\t\n", "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of "
             "them.\nThanks.", "They'll save and invest more.", "hi, my name can't hello,",
             'She said "hello" (twice) -- [really] {yes} <no>...', "'Tis the season, 'twas",
             "gimme gonna gotta lemme wanna more'n d'ye cannot", "I'm I'd I've we're you'll",
             "DON'T WON'T Can'T", "the dogs' bones, the cats' toys",
             "3,36 euros: 1,000,000 people; 50% @home #tag & co.",
             "the end.\"')", "Ünïcödé café, 中文 words? emoji 🙂!", "a.b.c. e.g. U.S.A.",
             "what color is the circle?", "``quoted'' text''", "a--b---c ... .. ."]
    for s in scenes.generate(40, seed=5):
        texts += s.captions + [q for q, _ in s.questions]
    rng = random.Random(0)
    alphabet = "aAbZ019 .,;:!?'\"`()[]{}<>-$%&@#\t\nnt'sll"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
              for _ in range(3000)]
    nltk_tok = TreebankWordTokenizer()
    for t in texts:
        assert treebank_tokens(t) == nltk_tok.tokenize(t), repr(t)
        assert tokenize(t) == nltk_tok.tokenize(t.lower()), repr(t)
