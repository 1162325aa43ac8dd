"""The documentation site: it builds with warnings as errors, broken references fail the
build, and every Python snippet of the guide runs.

``mkdocs build --strict`` runs here, so ``make test`` (and CI) fails on a broken reference in
the guide, the API reference or a docstring. Python blocks of ``docs/*.md`` run in order, one
namespace per page, in an empty folder holding the Quick start's ``scene.png``; a block whose
first line is ``# not run by the tests: <why>`` is skipped (it needs the network).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = "# not run by the tests:"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``; output in ``.stdout``."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=config.parent, env=env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, check=False,
    )


def blocks(page: Path) -> list[str]:
    """The fenced Python blocks of a page, in order."""
    return BLOCK.findall(page.read_text())


# ----------------------------------------------------------------------------- the site


def test_site_builds_strict_with_every_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    run = mkdocs_build(ROOT / "mkdocs.yml", site)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    ref = site / "reference"
    # each object the reference promises has its own anchor (mkdocstrings: id = full path)
    promised = {
        "explainers": ["mmcam.load_model", "mmcam.caption.CaptionExplainer",
                       "mmcam.vqa.VQAExplainer", "mmcam.classify.ClassExplainer"],
        "results": ["mmcam.results.CaptionExplanation", "mmcam.results.VQAExplanation",
                    "mmcam.results.ClassExplanation"],
        "cam": ["mmcam.cam.gradcam", "mmcam.cam.hirescam", "mmcam.cam.gradcam_plus_plus",
                "mmcam.cam.counterfactual", "mmcam.cam.localize"],
        "layers": ["mmcam.layers.Tokens", "mmcam.layers.Conv", "mmcam.layers.ChannelsLast",
                   "mmcam.layers.Custom", "mmcam.layers.resolve_layer"],
        "scores": ["mmcam.scores.token_scores", "mmcam.scores.Alternatives"],
        "evaluation": ["mmcam.evaluation.pointing_hit", "mmcam.evaluation.energy_ratio",
                       "mmcam.evaluation.randomization_check",
                       "mmcam.suite.evaluate_explanations", "mmcam.suite.SANITY_MAX"],
        "geometry": ["mmcam.geometry.Geometry", "mmcam.align.receptive_cells"],
        "models": ["mmcam.adapters.base.CaptionAdapter", "mmcam.models.hub.load_model",
                   "mmcam.errors.MMCamError"],
    }
    for page, ids in promised.items():
        html = (ref / page / "index.html").read_text()
        missing = [i for i in ids if f'id="{i}"' not in html]
        assert not missing, f"reference/{page} lacks {missing}"
    # a Sphinx role in a docstring became a link to the object's section:
    # CaptionExplainer's docstring says :mod:`mmcam.scores`
    html = (ref / "explainers" / "index.html").read_text()
    assert re.search(r'<a class="autorefs[^"]*"[^>]*href="\.\./scores/#mmcam\.scores"', html)
    # a name mmcam exports lazily links to where it is defined: VQAExplainer's docstring
    # says :class:`mmcam.CaptionExplainer`
    assert re.search(r'<a class="autorefs[^"]*"[^>]*href="#mmcam\.caption\.CaptionExplainer"',
                     html)


def test_snippets_are_marked_or_run() -> None:
    """Each page's Python blocks parse, and the only ones skipped carry the marker."""
    pages = sorted(DOCS.glob("*.md"))
    assert {p.name for p in pages} >= {"index.md", "quickstart.md", "own-model.md",
                                       "choosing.md", "evaluation.md"}
    for page in pages:
        for code in blocks(page):
            compile(code, str(page), "exec")


PAGES = [p for p in sorted(DOCS.glob("*.md")) if blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                             ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmcam.scenes import generate

    monkeypatch.chdir(tmp_path)
    generate(1, seed=8)[0].image.save("scene.png")  # the Quick start's scene
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for i, code in enumerate(blocks(page)):
        if code.lstrip().startswith(SKIP):
            continue
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block that failed
            raise AssertionError(f"{page.name}, Python block {i} fails: {e!r}\n{code}") from e
        finally:
            plt.close("all")
        ran += 1
    assert ran > 0


# ----------------------------------------------------------------------------- broken refs

SMALL_SITE = """\
site_name: t
theme: {{name: mkdocs}}
nav: [index.md]
plugins:
  - autorefs
  - mkdocstrings:
      handlers:
        python:
          paths: [{paths}]
          options:
            docstring_style: null
            extensions: ["{ext}:SphinxRoles"]
"""


def small_site(tmp_path: Path, page: str, module: str | None = None) -> subprocess.CompletedProcess:
    """A one-page site built with the project's reference setup; ``module``: the source of a
    package ``fakepkg`` the page may document."""
    paths = [str(ROOT)]
    if module is not None:
        pkg = tmp_path / "src" / "fakepkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(textwrap.dedent(module))
        paths.append(str(tmp_path / "src"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(textwrap.dedent(page))
    config = tmp_path / "mkdocs.yml"
    config.write_text(SMALL_SITE.format(paths=", ".join(f'"{p}"' for p in paths),
                                        ext=DOCS / "griffe_roles.py"))
    return mkdocs_build(config, tmp_path / "site")


FAKE = '''
    """A package."""


    def real() -> None:
        """A function."""


    def caller() -> None:
        """Calls {role}."""
'''


def test_small_site_control(tmp_path: Path) -> None:
    """The setup of the failing builds below builds when every reference is right, and
    turns the docstring's role into a link."""
    run = small_site(tmp_path, "# A\n\n::: fakepkg\n\n[the cam][mmcam.cam.gradcam]\n\n"
                     "::: mmcam.cam.gradcam\n", FAKE.format(role=":func:`real`"))
    assert run.returncode == 0, run.stdout + run.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r'href="#fakepkg\.real"', html)
    assert re.search(r'href="#mmcam\.cam\.gradcam"', html)


@pytest.mark.parametrize("page, module, says", [
    ("# A\n\n::: mmcam.nope\n", None, "mmcam.nope"),            # reference to no object
    ("# A\n\nsee [the cam][mmcam.cam.nope]\n", None, "mmcam.cam.nope"),  # cross-reference
    ("# A\n\n::: fakepkg\n", FAKE.format(role=":func:`nope`"), "nope"),  # docstring role
], ids=["directive", "crossref", "docstring-role"])
def test_broken_reference_fails_the_build(tmp_path: Path, page: str, module: str | None,
                                          says: str) -> None:
    run = small_site(tmp_path, page, module)
    log = run.stdout + run.stderr
    assert run.returncode != 0, log
    assert says in log, log
