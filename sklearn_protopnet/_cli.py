"""The ``protopnet`` console command: demo, fit, predict, explain.

Errors a user can fix (a missing or unreadable file, a bad option value)
end the command with one line on stderr and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from ._params import add_cli_options, cli_values

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MODEL_FORMATS = ("protopnet", "joblib")


class UserError(Exception):
    """A problem with what the user gave the command, said in one line."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protopnet",
        description="ProtoPNet image classifier: interpretable by prototypical parts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="write scikit-learn's digits as PNG files, fit on their paths, report accuracy, "
             "and write the prototype gallery, a few scoring sheets and an HTML report",
    )
    demo.add_argument("--out", default="protopnet-demo",
                      help="output folder (default: ./protopnet-demo)")
    demo.add_argument("--quiet", action="store_true", help="do not print training progress")

    fit = sub.add_parser("fit", help="fit on DIR/<class>/<image> and save the model")
    fit.add_argument("dir", help="a folder with one sub-folder of images per class")
    fit.add_argument("--out", default="protopnet-model.protopnet",
                     help="where to save the model (default: ./protopnet-model.protopnet)")
    fit.add_argument("--format", choices=MODEL_FORMATS, default="protopnet",
                     help="'protopnet': the pickle-free model file (ProtoPNetClassifier.save), "
                          "which loading never runs code from; 'joblib': a pickle "
                          "(default: protopnet)")
    add_cli_options(fit)  # one option per hyperparameter (see _params.py)
    fit.add_argument("--quiet", action="store_true", help="do not print training progress")

    predict = sub.add_parser(
        "predict", help="write CSV: path, predicted label and each class's probability")
    predict.add_argument("model", help="a model saved by 'protopnet fit'")
    predict.add_argument("images", nargs="+",
                         help="image files, or folders (their image files, recursively)")
    predict.add_argument("--out", default=None,
                         help="the CSV file to write (default: standard output)")

    explain = sub.add_parser("explain", help="write scoring sheets and an HTML report")
    explain.add_argument("model", help="a model saved by 'protopnet fit'")
    explain.add_argument("images", nargs="+",
                         help="image files, or folders (their image files, recursively)")
    explain.add_argument("--out", default="protopnet-explanations",
                         help="output folder (default: ./protopnet-explanations)")
    explain.add_argument("--top-k", type=_top_k, default=5,
                         help="evidence items per class on a sheet, or 'all' (every "
                              "prototype; the shown items then add up to the logit) "
                              "(default: 5)")
    return parser


def _top_k(text: str):
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'all', got {text!r}")
    return value


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def folder_dataset(folder: str) -> tuple[list[str], list[str]]:
    """(paths, labels) of the images in ``folder/<label>/``, sorted."""
    if not os.path.isdir(folder):
        raise UserError(f"not a folder: {folder!r}")
    paths, labels = [], []
    for label in sorted(os.listdir(folder)):
        sub = os.path.join(folder, label)
        if not os.path.isdir(sub):
            continue
        for name in sorted(os.listdir(sub)):
            if _is_image(name):
                paths.append(os.path.join(sub, name))
                labels.append(label)
    if len(set(labels)) < 2:
        raise UserError(
            f"{folder!r} must hold one sub-folder of images per class, at least two; "
            f"found {len(set(labels))} with images"
        )
    return paths, labels


def image_paths(arguments: list[str]) -> list[str]:
    """Files as given, and the image files under each folder (recursively,
    sorted), in the order of the arguments."""
    paths = []
    for arg in arguments:
        if os.path.isdir(arg):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(arg)
                           for name in names if _is_image(name))
            if not found:
                raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {arg!r}")
            paths += found
        elif not os.path.exists(arg):
            raise UserError(f"image file not found: {arg!r}")
        else:
            paths.append(arg)
    return paths


def _fit(args) -> None:
    import torch

    from ._classifier import ProtoPNetClassifier

    paths, labels = folder_dataset(args.dir)
    params = cli_values(args)
    if params["backbone"] == "small":
        from .backbones import SmallCNN

        # its weights are drawn at construction: from --random-state, so that
        # one command line gives one model, without touching the global RNG
        with torch.random.fork_rng():
            torch.manual_seed(params["random_state"])
            params["backbone"] = SmallCNN()
    clf = ProtoPNetClassifier(**params, verbose=0 if args.quiet else 1)
    print(f"fitting on {len(paths)} images of {len(set(labels))} classes from {args.dir}")
    clf.fit(paths, labels)
    if clf.accelerator is not None:
        from ._accelerate import Processes

        if not Processes.of(clf.accelerator).is_main:
            return  # every process fitted the same model; rank 0 saves it
    folder = os.path.dirname(args.out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    if args.format == "joblib":
        import joblib

        joblib.dump(clf, args.out)
    else:
        clf.save(args.out)
    print(f"model saved to {args.out} ({args.format} format)")


def load_model(path: str):
    """A model written by ``protopnet fit``: the model file, or a joblib pickle."""
    import zipfile

    from ._classifier import ProtoPNetClassifier

    if not os.path.isfile(path):
        raise UserError(f"model file not found: {path!r}")
    if zipfile.is_zipfile(path):
        return ProtoPNetClassifier.load(path)
    import joblib

    return joblib.load(path)


def _predict(args) -> None:
    clf = load_model(args.model)
    paths = image_paths(args.images)
    proba = clf.predict_proba(paths)
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "label"] + [f"proba_{c}" for c in clf.classes_])
        for path, p in zip(paths, proba):
            writer.writerow([path, clf.classes_[int(p.argmax())]] + [f"{v:.6g}" for v in p])
    finally:
        if out is not sys.stdout:
            out.close()


def _explain(args) -> None:
    from ._report import write_sheets_and_report

    clf = load_model(args.model)
    explanations = clf.explain(image_paths(args.images), top_k=args.top_k)
    report = os.path.join(args.out, "report.html")
    sheets = write_sheets_and_report(clf, explanations, args.out, report)
    for explanation, sheet in zip(explanations, sheets):
        print(f"{explanation.name}\t{explanation.predicted}\t{sheet}")
    print(f"report written to {report}")


def main(argv=None) -> int:
    """Run ``protopnet`` with ``argv``; return the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            run_demo(args.out, verbose=0 if args.quiet else 1)
        elif args.command == "fit":
            _fit(args)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "explain":
            _explain(args)
    except (UserError, OSError, ValueError) as exc:
        print(f"protopnet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"protopnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
