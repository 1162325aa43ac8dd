"""The ``mmcam`` command line. Bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcam.errors import MMCamError
from mmcam.registry import PATH_STEPS, cli_methods, cli_scores

METHOD_CHOICES = cli_methods("classify")  # every CAM formula (mmcam.registry.METHODS)


def _classify(args: argparse.Namespace) -> int:
    if args.cls is not None and args.top is not None:
        raise MMCamError("--class and --top exclude each other: --class explains one class")
    top = 3 if args.top is None else args.top
    _at_least(1, top=top, steps=args.steps)  # flags first: before torch loads
    _check_out(args.out)
    _check_layer(args.layer)
    with _importing():
        from mmcam.classify import ClassExplainer
        from mmcam.images import load_image

    image = load_image(args.image)  # fail on a bad image before building a model
    from mmcam.models.hub import looks_like_path

    looks_local = args.model.startswith("shapes-") or looks_like_path(args.model) or \
        Path(args.model).is_dir()
    if looks_local:
        from mmcam.models.hub import load_model

        adapter = load_model(args.model)
        if not hasattr(adapter, "labels"):
            raise MMCamError(f"{args.model} is not a classifier: explain it with mmcam caption "
                             "or mmcam vqa")
        if args.layer:
            adapter.layer = args.layer
    else:
        from mmcam.adapters.torchvision import build_classifier

        adapter = build_classifier(args.model, weights=args.weights, layer=args.layer)
    explainer = ClassExplainer(adapter, method=args.method, steps=args.steps)
    n = len(adapter.labels)
    if args.cls is not None and not 0 <= args.cls < n:
        raise MMCamError(f"--class {args.cls} is out of range: the model has {n} classes")
    classes = None if args.cls is None else [args.cls]
    result = explainer.explain(image, classes=classes, top=top, guided=True)
    files = _save(result, args.out)
    for c, lab, p, b in zip(result.classes, result.labels, result.probabilities, result.boxes):
        print(f"class {c} ({lab}): p={p:.4f} box={b}")
    print(f"wrote {len(files)} files to {args.out}")
    if not looks_local and not args.weights:  # after the work: an error stays one line
        print(f"mmcam classify: note: {args.model} without --weights has random weights "
              "(nothing is downloaded): its classes mean nothing; give --weights FILE or "
              "DEFAULT", file=sys.stderr)
    return 0


def _caption(args: argparse.Namespace) -> int:
    from mmcam.limits import check_words

    _at_least(1, beam=args.beam, steps=args.steps)  # flags first: before torch loads
    _check_out(args.out)
    _check_layer(args.layer)
    versus = _pairs(args.versus)
    if versus and args.score != "versus":
        raise MMCamError("--versus names alternatives for --score versus: add --score versus")
    if args.caption is not None:
        check_words(args.caption, "caption")
    with _importing():
        from mmcam.caption import CaptionExplainer
        from mmcam.images import load_image
        from mmcam.models.hub import load_model

    image = load_image(args.image)
    if args.caption is not None and not args.caption.strip():
        raise MMCamError("the caption is empty: give some words or leave --caption out")
    model = load_model(args.model, **_placement(args),
                       **({"prompt": args.prompt} if args.prompt else {}))
    explainer = CaptionExplainer(model, method=args.method, layer=args.layer,
                                 strategy=args.strategy, align=args.align, score=args.score,
                                 versus=versus, steps=args.steps)
    result = explainer.explain(image, caption=args.caption, beam_size=args.beam)
    _save(result, args.out)
    print(f"caption: {result.caption}")
    if result.unknown_words:
        print(f"  {result.unknown_notice()}")
    for w, lp, v, b in zip(result.words, result.logprobs, result.values or result.logprobs,
                           result.boxes):
        extra = "" if args.score == "logprob" else f"  {args.score} = {v:8.3f}"
        print(f"  {w:>12s}  log p = {lp:8.4f}{extra}  box = {b}")
    print(f"wrote {args.out}/index.html")
    return 0


def _vqa(args: argparse.Namespace) -> int:
    from mmcam.limits import check_words

    _at_least(1, top=args.top, steps=args.steps)  # flags first: before torch loads
    _check_out(args.out)
    _check_layer(args.layer)
    check_words(args.question, "question")
    with _importing():
        from mmcam.images import load_image
        from mmcam.models.hub import is_hf_model, load_model
        from mmcam.vqa import VQAExplainer, check_contrast

    image = load_image(args.image)
    if not args.question.strip():
        raise MMCamError("the question is empty: ask something about the image")
    check_contrast(args.answer, args.contrast)
    place = _placement(args)
    if is_hf_model(args.model):  # GIT VQA checkpoints share the captioning class
        place["task"] = "vqa"
    explainer = VQAExplainer(load_model(args.model, **place), method=args.method,
                             layer=args.layer, strategy=args.strategy, align=args.align,
                             score=args.score, steps=args.steps)
    result = explainer.explain(
        image, args.question, answer=args.answer, contrast=args.contrast, top_k=args.top
    )
    _save(result, args.out)
    print(f"question: {result.question}")
    if result.unknown_words:
        print(f"  words the model does not know (read as <unk>): {', '.join(result.unknown_words)}")
    print(f"answer: {result.answer}  box = {result.box}")
    if result.contrast is not None:
        print(f"  rather than {result.contrast}: box = {result.contrast_box}")
    for a, p in result.top_probabilities:  # the maps are in the saved files
        print(f"  {a:>10s}  p = {p:.4f}")
    print(f"wrote {args.out}/index.html")
    return 0


def _hyper(pairs: list[str]) -> dict[str, float]:
    """``["lr=7e-4", "vision_steps=0"]`` -> ``{"lr": 0.0007, "vision_steps": 0}``."""
    hp: dict[str, float] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        bad = MMCamError(f"--set {pair!r}: use NAME=NUMBER, e.g. --set lr=7e-4")
        if not eq or not name.strip():
            raise bad
        try:
            hp[name.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise bad from None
    return hp


def _train(args: argparse.Namespace) -> int:
    _check_out(args.out)
    if args.init_from is not None:
        if args.kind not in ("blip-captioner", "blip-vqa"):
            raise MMCamError("--init-from is for blip-captioner and blip-vqa")
        if not (Path(args.init_from) / "config.json").is_file():
            raise MMCamError(f"--init-from {args.init_from}: no model folder there (no "
                             "config.json)")
    if args.kind in ("blip-captioner", "blip-vqa"):
        _need("transformers", "hf", f"training {args.kind}")
        from mmcam.models.train_blip import train_blip

        task = "caption" if args.kind == "blip-captioner" else "vqa"
        metrics = train_blip(task, args.out, seed=args.seed, steps=args.steps,
                             init_from=args.init_from, hp=_hyper(args.set))
    else:
        if args.set:
            raise MMCamError("--set is for blip-captioner and blip-vqa")
        from mmcam.models.train import train

        metrics = train(args.kind, args.out, seed=args.seed, steps=args.steps)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mmcam.models.evaluate import evaluate

    kwargs = {"n": args.n}
    if args.seed is not None:
        kwargs["seed"] = args.seed
    print(json.dumps(evaluate(args.model, **kwargs), indent=2))
    return 0


def _bias_study(args: argparse.Namespace) -> int:
    _check_out(args.out)
    from mmcam.bias import FILES, StudyConfig, run_study

    given = {k: getattr(args, k) for k in ("n_train", "n_test", "steps", "cue_rate", "cue_size")}
    cfg = StudyConfig(seed=args.seed, model=args.model,
                      **{k: v for k, v in given.items() if v is not None})
    result = run_study(args.out, cfg)
    for name, m in result["models"].items():
        score = list(m["gradcam"])[-1]  # the margin: y_c - y_other
        g = m["gradcam"][score]["predicted_class"]
        print(f"{name:>8s}: test accuracy {m['accuracy']:.4f}; Grad-CAM of the predicted "
              f"class's margin: share in the cue box + 8 px {g['cue_near']['share']}, "
              f"in the object {g['object']['share']}")
    print(f"wrote {', '.join(FILES)} to {args.out} in {result['wall_seconds']:.0f} s")
    return 0


def _evaluate_explanations(args: argparse.Namespace) -> int:
    from mmcam.models.hub import load_model
    from mmcam.registry import RECOMMENDATION_FILE
    from mmcam.suite import SANITY_MAX, evaluate_explanations, save_recommendation

    if args.n < 1:
        raise MMCamError("--n must be at least 1")
    _at_least(1, steps=args.steps)
    for flag in ("n_deletion", "n_sanity", "slack"):
        if getattr(args, flag) < 0:
            raise MMCamError(f"--{flag.replace('_', '-')} must be 0 or more")
    if args.save_recommended and args.n_sanity == 0:
        raise MMCamError("--save-recommended needs the sanity check (--n-sanity 1 or more): "
                         "only settings that pass it are recommended")
    _check_out(args.out)
    adapter = load_model(args.model, **_placement(args))
    if args.save_recommended and getattr(adapter, "folder", None) is None:
        raise MMCamError(f"--save-recommended writes into the model's folder, and {args.model} "
                         "was not loaded from one: pass the checkpoint's folder")
    report = evaluate_explanations(
        adapter, args.model, n=args.n, seed=args.seed,
        methods=args.methods, scores=args.scores, aligns=args.aligns, slack=args.slack,
        n_deletion=args.n_deletion, n_sanity=args.n_sanity, out=args.out,
        fill=args.deletion_fill, layers=args.layers, steps=args.steps)
    rec = report["recommended"]
    if rec:
        print(f"recommended: method {rec['method']}, score {rec['score']}, align "
              f"{rec['align']}, layer {rec['layer']} (mean pointing {rec['mean_pointing']:.2f})")
    if args.save_recommended:
        if not rec:
            print("nothing recommended (no setting passed the sanity check): no "
                  f"{RECOMMENDATION_FILE} written", file=sys.stderr)
        else:
            try:
                path = save_recommendation(report, adapter.folder, _suite_command(args))
            except OSError as e:
                raise MMCamError(f"cannot write {RECOMMENDATION_FILE} into {adapter.folder}: "
                                 f"{e.strerror or e}") from None
            print(f"wrote {path} (the app offers this setting first for this model)")
    for k, v in report["sanity"].items():
        verdict = "passes" if report["sanity_value"][k] < SANITY_MAX else "FAILS"
        print(f"sanity check {k}: {' -> '.join(f'{r:.2f}' for _, r in v)} ({verdict})")
    print(f"wrote report.json, report.md and report.html to {args.out}")
    return 0


def _suite_command(args: argparse.Namespace) -> str:
    """The ``evaluate-explanations`` command line that measured ``args``' report (the
    options that change its numbers)."""
    parts = ["mmcam evaluate-explanations", args.model, f"--n {args.n}", f"--seed {args.seed}",
             "--methods " + " ".join(args.methods), "--scores " + " ".join(args.scores),
             "--aligns " + " ".join(args.aligns), f"--slack {args.slack}",
             f"--n-deletion {args.n_deletion}", f"--n-sanity {args.n_sanity}",
             f"--steps {args.steps}"]
    if args.layers:
        parts.append("--layers " + " ".join(args.layers))
    return " ".join(parts)


_program = False  # set by main() when it runs as the program (see _importing)


@contextlib.contextmanager
def _importing() -> Any:
    """Run as the program: the cyclic garbage collector paused while torch and mmcam's
    modules are imported (some 285,000 objects; collecting through them again and again took
    about 10% of importing torch), then those objects frozen (never scanned again: they live
    until the process ends anyway). Called from a library (``main(argv)``), nothing changes."""
    if not _program or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _save(result: Any, out: str) -> Any:
    """``result.save(out)``; a folder the system refuses (a read-only or special file system
    that :func:`_check_out` could not foresee) is one line, not a traceback."""
    try:
        return result.save(out)
    except OSError as e:
        raise MMCamError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def _at_least(low: int, **given: int) -> None:
    """Each ``--name value`` must be at least ``low``."""
    for name, value in given.items():
        if value < low:
            raise MMCamError(f"--{name} {value}: must be at least {low}")


def _check_out(out: str) -> None:
    """``--out`` must be a folder that exists or can be made; nothing is left created here
    (a probe folder is made and removed where the first missing part would go)."""
    if not out.strip():
        raise MMCamError("--out is empty: give a folder for the results")
    path = Path(out).expanduser()
    if path.is_symlink() and not path.exists():
        raise MMCamError(f"--out {out} is a broken symbolic link: give a folder")
    if path.exists() and not path.is_dir():
        raise MMCamError(f"--out {out} is an existing file: give a folder (new or existing)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise MMCamError(f"--out {out}: {probe} is a file, so no folder can be made there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MMCamError(f"--out {out}: {probe} is not writable: give a folder you can write")
    import tempfile

    try:  # some file systems (/proc, /sys) refuse new folders whatever the permissions say
        os.rmdir(tempfile.mkdtemp(prefix=".mmcam-probe-", dir=probe))
    except OSError as e:
        raise MMCamError(f"--out {out}: no folder can be made in {probe} "
                         f"({e.strerror or e})") from None


def _check_layer(layer: str | None) -> None:
    """``--layer`` given must name something (an empty one would mean the default)."""
    if layer is not None and not layer.strip():
        raise MMCamError("--layer is empty: give a dotted layer path, or leave it out for the "
                         "model's own layer")


def _seed(text: str) -> int:
    """argparse type of ``--seed``: an integer of at least 0 (numpy's generators' range)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: a seed is an integer of at least 0")
    return value


def _pairs(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["circle=square", ...]`` -> ``{"circle": "square", ...}``."""
    if not items:
        return None
    out = {}
    for it in items:
        word, sep, alt = it.partition("=")
        if not sep or not word.strip() or not alt.strip():
            raise MMCamError(f"--versus {it!r}: write WORD=ALTERNATIVE, e.g. circle=square")
        if word.strip() in out:
            raise MMCamError(f"--versus names {word.strip()!r} twice: give one alternative "
                             "per word")
        out[word.strip()] = alt.strip()
    return out


def _need(module: str, extra: str, what: str) -> None:
    """Raise one line naming the ``pip install`` to run when ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] != module:
            raise  # the module is there but broken: show where
        raise MMCamError(f"{what} needs {module}: pip install 'mmcam[{extra}]'") from None


def _demo(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise MMCamError(f"--port {args.port}: a port is a number from 0 to 65535")
    _need("gradio", "app", "the app")
    from mmcam.app import exposure_warning, launch

    allow = args.allow_model_folders or None  # None: on when serving this machine alone
    warning = exposure_warning(args.host, args.share, bool(args.allow_model_folders))
    if warning:
        print(f"mmcam demo: {warning}", file=sys.stderr)
    launch(host=args.host, port=args.port, share=args.share, allow_model_folders=allow)
    return 0


def _placement(args: argparse.Namespace) -> dict:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise MMCamError("--device cuda: no CUDA device is available here")
    out = {"device": args.device, "dtype": getattr(torch, args.dtype)}
    if getattr(args, "trust_remote_code", False):
        out["trust_remote_code"] = True
    return out


def _engine_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--trust-remote-code", action="store_true",
                   help="let a Hugging Face checkpoint run the Python code it ships "
                   "(auto_map); only for checkpoints you trust")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights (scores are always taken in float32)")
    c.add_argument("--layer", default=None,
                   help="dotted layer path, e.g. encoder.9 (default: the model's own)")
    c.add_argument("--strategy", default="auto", choices=["auto", "copies", "vjp", "readers"],
                   help="how the word/answer rows are batched (same maps; 'readers', BLIP's "
                        "default for gradcam/hirescam, skips forming the full gradients)")
    c.add_argument("--align", default="receptive", choices=["receptive", "bilinear"],
                   help="draw grid cells at their receptive fields' centres, or where plain "
                        "bilinear upsampling puts them")
    _steps_option(c)


def _steps_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("--steps", type=int, default=PATH_STEPS,
                   help="--method integrated: points on the path from the mean-color image "
                        "(each one gradient pass)")


def build_parser() -> argparse.ArgumentParser:
    from mmcam import __version__

    p = argparse.ArgumentParser(prog="mmcam", description="Grad-CAM for captions, VQA, classes")
    p.add_argument("--version", action="version", version=f"mmcam {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="explain a CNN classifier's top classes")
    c.add_argument("image")
    c.add_argument("--model", default="resnet50", help="torchvision name or shapes-classifier")
    c.add_argument("--weights", default=None, help="PATH to a state dict, DEFAULT or enum name")
    c.add_argument("--layer", default=None, help="dotted layer name (default: last conv block)")
    c.add_argument("--method", default="gradcam", choices=METHOD_CHOICES)
    c.add_argument("--class", dest="cls", type=int, default=None, help="explain this class id")
    _steps_option(c)
    c.add_argument("--top", type=int, default=None, help="explain the top classes (default 3)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_classify)

    c = sub.add_parser("caption", help="explain every word of a caption")
    c.add_argument("image")
    c.add_argument("--caption", default=None, help="explain this caption (default: generate)")
    c.add_argument("--model", default="shapes-captioner",
                   help="shipped name, a model folder, or hf:<hub id> (a cached checkpoint)")
    c.add_argument("--prompt", default=None,
                   help="Hugging Face captioners: text read before the caption (not explained)")
    c.add_argument("--method", default="gradcam", choices=cli_methods("caption"))
    c.add_argument("--score", default="logprob", choices=cli_scores("caption"),
                   help="what is explained per word (contrast: against the words of its kind "
                        "or the model's top alternatives; versus: see --versus)")
    c.add_argument("--versus", action="append", default=None, metavar="WORD=ALT",
                   help="with --score versus: explain WORD rather than ALT (repeatable)")
    c.add_argument("--beam", type=int, default=1, help="beam size for generation")
    _engine_options(c)
    c.add_argument("--out", required=True)
    c.set_defaults(func=_caption)

    c = sub.add_parser("vqa", help="explain a VQA answer")
    c.add_argument("image")
    c.add_argument("question")
    c.add_argument("--answer", default=None, help="explain this answer (default: the model's)")
    c.add_argument("--contrast", default=None, help="why --answer rather than this one")
    c.add_argument("--model", default="shapes-vqa")
    c.add_argument("--method", default="gradcam", choices=cli_methods("vqa"))
    c.add_argument("--score", default="logprob", choices=cli_scores("vqa"),
                   help="what is explained (contrast: against the answers of its kind or the "
                        "model's top alternatives)")
    c.add_argument("--top", type=int, default=5)
    _engine_options(c)
    c.add_argument("--out", required=True)
    c.set_defaults(func=_vqa)
    _add_model_commands(sub)
    return p


def _add_model_commands(sub: Any) -> None:
    """Training, evaluation, the bias study and the app."""
    c = sub.add_parser("train", help="train a reference model from scratch")
    c.add_argument("kind", choices=["captioner", "vqa", "classifier", "blip-captioner", "blip-vqa"])
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--init-from", default=None,
                   help="blip-*: start from a shapes-blip(-vqa) folder's weights")
    c.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="blip-*: replace a training hyper-parameter (e.g. --set lr=7e-4)")
    c.set_defaults(func=_train)

    c = sub.add_parser("evaluate-explanations",
                       help="measure a model's maps on fresh scenes with ground truth")
    c.add_argument("model", help="shipped name, a model folder, or hf:<hub id>")
    c.add_argument("--n", type=int, default=500, help="fresh scenes")
    c.add_argument("--seed", type=_seed, default=2_000_000)
    c.add_argument("--methods", nargs="+",
                   default=["gradcam", "gradcam++", "hirescam", "integrated"],
                   choices=METHOD_CHOICES)
    c.add_argument("--scores", nargs="+", default=["logprob", "contrast"],
                   choices=cli_scores("vqa"))
    c.add_argument("--aligns", nargs="+", default=["receptive", "bilinear"],
                   choices=["receptive", "bilinear"])
    c.add_argument("--slack", type=int, default=4, help="pointing slack in pixels")
    c.add_argument("--n-deletion", type=int, default=50, help="scenes with deletion curves")
    c.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                   help="explained layers to compare (dotted paths; default: the model's own)")
    c.add_argument("--deletion-fill", choices=("mean", "blur"), default="mean",
                   help="what removed pixels become: the image's mean color or a blurred copy")
    c.add_argument("--n-sanity", type=int, default=10,
                   help="scenes for the sanity check (0: skip it, and the recommendation)")
    _steps_option(c)
    c.add_argument("--save-recommended", action="store_true",
                   help="write the recommended setting into the model's folder "
                        "(mmcam_recommended.json), where the app finds it")
    c.add_argument("--trust-remote-code", action="store_true",
                   help="let a Hugging Face checkpoint run the Python code it ships")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--out", required=True)
    c.set_defaults(func=_evaluate_explanations)

    c = sub.add_parser("evaluate-model", help="measure a reference model on fresh scenes")
    c.add_argument("model")
    c.add_argument("--n", type=int, default=500)
    c.add_argument("--seed", type=_seed, default=None)
    c.set_defaults(func=_evaluate)

    c = sub.add_parser("bias-study",
                       help="the paper's bias experiment: a classifier (or a captioner) "
                       "trained with a spurious cue vs one trained without, and where "
                       "Grad-CAM looks")
    c.add_argument("--out", required=True)
    c.add_argument("--model", choices=("classifier", "captioner"), default="classifier",
                   help="the model trained twice (default classifier; captioner: the shape "
                   "word of its captions)")
    c.add_argument("--seed", type=_seed, default=0)
    c.add_argument("--n-train", type=int, default=None, help="training scenes (default 4000)")
    c.add_argument("--n-test", type=int, default=None,
                   help="held-out test scenes, a multiple of 4 (default 1000)")
    c.add_argument("--steps", type=int, default=None, help="training steps (default 1000)")
    c.add_argument("--cue-rate", type=float, default=None,
                   help="share of the cue class's training images with the cue (default 1)")
    c.add_argument("--cue-size", type=int, default=None, help="cue side in px (default 8)")
    c.set_defaults(func=_bias_study)

    c = sub.add_parser("demo", help="start the Gradio app on the shipped models")
    c.add_argument("--host", default="127.0.0.1",
                   help="listen address (another than 127.0.0.1 prints a warning and turns "
                        "loading model folders from the page off)")
    c.add_argument("--allow-model-folders", action="store_true",
                   help="let pages load model folders (from under $MMCAM_MODELS, the shipped "
                        "models and the Hugging Face cache) also when --host or --share "
                        "exposes the app")
    c.add_argument("--port", type=int, default=7860)
    c.add_argument("--share", action="store_true", help="ask Gradio for a public link")
    c.set_defaults(func=_demo)


ONE_SHOT = ("caption", "vqa", "classify")
"""Commands that, run as the program, end the process as soon as their output is written."""
PASSIVE_THREADS = (*ONE_SHOT, "train", "evaluate-explanations", "evaluate-model", "bias-study")
"""Commands that, run as the program, let torch's idle threads sleep (``OMP_WAIT_POLICY``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, no traceback).

    Run as the program (``argv`` None: the ``mmcam`` script, ``python -m mmcam``), the
    commands of :data:`PASSIVE_THREADS` set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set
    (torch's idle threads sleep rather than spin: on a busy machine a small model's explain
    took 1.5-7 s with spinning threads, 0.25 s without, and two evaluations run at once took
    35-53 s instead of 8); the commands of :data:`ONE_SHOT` also import torch with the garbage
    collector paused (:func:`_importing`) and end the process once their files are written
    and stdout and stderr flushed (:func:`_end`), skipping the interpreter's teardown of
    torch's modules (about 0.6 s).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.command in PASSIVE_THREADS and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    if argv is None and args.command in ONE_SHOT and "torch" not in sys.modules:
        global _program
        _program = True
    code = _run(args)
    if argv is None and args.command in ONE_SHOT:
        _end(code)
    return code


def _end(code: int) -> None:
    """Flush stdout and stderr and end the process with ``code`` now (no atexit handlers;
    not under coverage, which writes its data at exit)."""
    if "coverage" in sys.modules:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; ``MMCamError`` becomes one line on stderr and code 2."""
    def show(message, category, filename, lineno, file=None, line=None):
        images = sys.modules.get("mmcam.images")  # imported by then if it warned
        if images is not None and issubclass(category, images.ImageNotice):
            print(f"mmcam {args.command}: note: {message}", file=sys.stderr)  # one line
        else:
            shown(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            shown = warnings.showwarning
            warnings.showwarning = show
            return int(args.func(args) or 0)
    except MMCamError as e:
        print(f"mmcam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
