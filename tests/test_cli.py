"""The command line: outputs written, bad input exits 2 with one line and no traceback."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from PIL import Image

from mmcam.cli import main

SKIMAGE_DATA = None
try:
    import skimage

    SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photo from scikit-image's data folder, shrunk to keep the test fast."""
    if SKIMAGE_DATA is None:
        pytest.skip("scikit-image is not installed")
    im = Image.open(os.path.join(SKIMAGE_DATA, "chelsea.png")).convert("RGB")
    path = tmp_path_factory.mktemp("img") / "chelsea_small.png"
    im.resize((150, 100)).save(path)
    return path


def test_classify_with_a_weights_file(photo, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1000)
    weights = tmp_path / "r18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    rc = main(["classify", str(photo), "--model", "resnet18", "--weights", str(weights),
               "--top", "2", "--method", "gradcam++", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "result.json").read_text())
    # the same outputs as captions and VQA: grids, an interactive page
    for name in ("grid.png", "grid_per_map_scale.png", "index.html"):
        assert (out / name).is_file(), name
    assert "data-i=\"2\"" in (out / "index.html").read_text()  # one item per class (2)
    # independent oracle for the top classes: the model itself on the same preprocessing
    from mmcam.adapters.torchvision import build_classifier

    clf = build_classifier("resnet18", weights=weights)
    with torch.no_grad():
        logits = model.eval()(clf.prepare(Image.open(photo)))[0]
    top = logits.topk(2)
    assert [c["id"] for c in data["classes"]] == top.indices.tolist()
    assert data["classes"][0]["score"] == pytest.approx(float(top.values[0]), rel=1e-5)
    for c in data["classes"]:
        box = c["box"]
        assert 0 <= box[0] < box[2] <= 150 and 0 <= box[1] < box[3] <= 100
        for kind in ("gradcam++", "box", "guided_gradcam"):
            name = f"class{data['classes'].index(c)}_{c['id']}_{kind}.png"
            assert Image.open(out / name).size == (150, 100)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmcam", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "make_input,extra,message",
    [
        (lambda d: d / "missing.png", [], "image not found"),
        (lambda d: (d / "t.txt").write_text("hi") and d / "t.txt", [], "not an image file"),
        (lambda d: d / "cut.png", [], "truncated"),
        (None, ["--model", "resnet5"], "unknown torchvision model 'resnet5'"),
        (None, ["--model", "resnet18", "--layer", "layer9"], "no layer named 'layer9'"),
        (None, ["--model", "resnet18", "--layer", "fc"], "choose a conv layer"),
        (None, ["--model", "resnet18", "--weights", "/nope.pth"], "weights file not found"),
        (None, ["--model", "resnet18", "--class", "1000"], "out of range"),
    ],
)
def test_classify_bad_input_exits_2_with_one_line(
    photo, tmp_path, capsys, make_input, extra, message
):
    full = photo.read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 3])
    image = make_input(tmp_path) if make_input else photo
    rc = main(["classify", str(image), *extra, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "o").exists()


def test_unreached_layer_exits_2_without_traceback(photo, tmp_path):
    # googlenet's auxiliary heads do not run in eval mode: a layer the forward never reaches
    r = run_cli("classify", str(photo), "--model", "googlenet", "--layer", "aux1.conv.conv",
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "mmcam classify: error: the forward pass never reached layer 'aux1.conv.conv': "
        "choose a layer the model uses"
    ]


def test_version_is_printed(capsys):
    import mmcam
    from mmcam.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"mmcam {mmcam.__version__}"



@pytest.mark.parametrize("argv, code, last", [
    (["caption", "scene.png", "--out", "o"], 0, "wrote o/index.html"),
    (["vqa", "scene.png", "what color is the circle?", "--out", "o"], 0, "wrote o/index.html"),
    (["classify", "scene.png", "--model", "shapes-classifier", "--out", "o"], 0,
     "wrote 13 files to o"),
    (["caption", "scene.png", "--beam", "0", "--out", "o"], 2, ""),
])
def test_program_ends_at_once_with_its_output_complete(tmp_path, monkeypatch, capsys, argv,
                                                       code, last):
    """Run as the program, a one-shot command ends with os._exit: its piped stdout and
    stderr, its files and its exit code are those of ``main(argv)`` run in this process."""
    from mmcam import scenes

    scenes.generate(1, seed=3)[0].image.save(tmp_path / "scene.png")
    env = {k: v for k, v in os.environ.items()  # block-buffered output, no coverage
           if not k.startswith("COV") and k != "PYTHONUNBUFFERED"}
    r = subprocess.run([sys.executable, "-m", "mmcam", *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    (tmp_path / "here" / "scene.png").write_bytes((tmp_path / "scene.png").read_bytes())
    assert main(argv) == code == r.returncode
    here = capsys.readouterr()
    assert (r.stdout, r.stderr) == (here.out, here.err)
    assert r.stdout.rstrip("\n").endswith(last)
    if code == 2:
        assert r.stdout == "" and r.stderr.count("\n") == 1
        return
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "here" / "o").iterdir())
    for name in names:
        assert (tmp_path / "o" / name).stat().st_size > 0
        if name.endswith(".json"):  # equal (floats to 1e-5: torch's sums in another process)
            _same(json.loads((tmp_path / "o" / name).read_text()),
                  json.loads((tmp_path / "here" / "o" / name).read_text()))


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9)
    else:
        assert a == b


@pytest.mark.parametrize("argv", [
    ["caption", "scene.png", "--beam", "0", "--out", "o"],
    ["caption", "scene.png", "--caption", " ".join(["red"] * 600), "--out", "o"],
    ["vqa", "scene.png", "what?", "--top", "-1", "--out", "o"],
    ["classify", "scene.png", "--top", "0", "--out", "o"],
    ["vqa", "scene.png", "what?", "--steps", "0", "--out", "o"],
    ["caption", "scene.png", "--out", "scene.png"],
])
def test_bad_flags_are_answered_before_torch_loads(tmp_path, argv):
    """A bad flag is one line and exit 2 without importing torch (a fraction of a second,
    not the seconds torch takes)."""
    (tmp_path / "scene.png").write_bytes(b"not read")
    code = (f"import sys\nfrom mmcam.cli import main\nrc = main({argv!r})\n"
            "print(rc, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"mmcam {argv[0]}: error: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_out_where_the_system_refuses_a_folder(tmp_path):
    """``--out`` under /proc (no folder can be made there, whatever the permissions say):
    one line and exit 2, no traceback."""
    from mmcam import scenes

    scenes.generate(1, seed=3)[0].image.save(tmp_path / "scene.png")
    r = subprocess.run([sys.executable, "-m", "mmcam", "caption", "scene.png", "--out",
                        "/proc/mmcam-out"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "--out /proc/mmcam-out" in r.stderr


def test_main_called_from_python_leaves_the_garbage_collector_alone(tmp_path, monkeypatch):
    """Only the program pauses and freezes the collector around its imports; ``main(argv)``
    in someone's process (a notebook, these tests) freezes nothing and leaves it on."""
    import gc

    from mmcam import scenes

    scenes.generate(1, seed=3)[0].image.save(tmp_path / "scene.png")
    monkeypatch.chdir(tmp_path)
    frozen = gc.get_freeze_count()
    assert main(["caption", "scene.png", "--out", "o"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen


@pytest.mark.parametrize(
    "args,message",
    [
        (["captioner", "--set", "lr=1"], "--set is for blip-captioner and blip-vqa"),
        (["blip-vqa", "--set", "lr"], "use NAME=NUMBER"),
        (["blip-vqa", "--set", "lr=fast"], "use NAME=NUMBER"),
        (["blip-vqa", "--set", "lrr=3", "--steps", "1"], "unknown hyper-parameter(s) ['lrr']"),
    ],
)
def test_train_bad_hyper_parameters_exit_2_with_one_line(tmp_path, capsys, args, message):
    rc = main(["train", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "o").exists()


_ENV_PROBE = """
import os, sys
sys.argv = ["mmcam", *sys.argv[1:]]
from mmcam.cli import main
code = main()
print(code, os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("argv", [
    ["evaluate-model", "no-such-model"],
    ["evaluate-explanations", "no-such-model", "--out", "o"],
    ["train", "captioner", "--out", "", "--steps", "1"],
    ["bias-study", "--out", ""],
])
@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_long_commands_let_idle_threads_sleep(tmp_path, argv, given):
    """Run as the program, the long commands (training, evaluations, the bias study) set
    OMP_WAIT_POLICY=PASSIVE before torch loads (two evaluations at once took 35-53 s with
    spinning threads, 8 s with sleeping ones); a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    r = subprocess.run([sys.executable, "-c", _ENV_PROBE, *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["2", given or "PASSIVE"], r.stderr
