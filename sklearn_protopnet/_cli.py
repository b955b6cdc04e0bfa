"""The ``protopnet`` console command: demo, fit, predict, explain."""

from __future__ import annotations

import argparse
import os
import sys

from ._params import add_cli_options, cli_values

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    fit.add_argument("--out", default="protopnet-model.joblib",
                     help="where to save the model (default: ./protopnet-model.joblib)")
    add_cli_options(fit)  # one option per hyperparameter (see _params.py)
    fit.add_argument("--quiet", action="store_true", help="do not print training progress")

    predict = sub.add_parser("predict", help="print 'path<TAB>label<TAB>probability' per image")
    predict.add_argument("model", help="a model saved by 'protopnet fit'")
    predict.add_argument("images", nargs="+", help="image files")

    explain = sub.add_parser("explain", help="write scoring sheets and an HTML report")
    explain.add_argument("model", help="a model saved by 'protopnet fit'")
    explain.add_argument("images", nargs="+", help="image files")
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


def folder_dataset(folder: str) -> tuple[list[str], list[str]]:
    """(paths, labels) of the images in ``folder/<label>/``, sorted."""
    if not os.path.isdir(folder):
        raise SystemExit(f"protopnet fit: not a folder: {folder!r}")
    paths, labels = [], []
    for label in sorted(os.listdir(folder)):
        sub = os.path.join(folder, label)
        if not os.path.isdir(sub):
            continue
        for name in sorted(os.listdir(sub)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                paths.append(os.path.join(sub, name))
                labels.append(label)
    if len(set(labels)) < 2:
        raise SystemExit(
            f"protopnet fit: {folder!r} must hold one sub-folder of images per class, at "
            f"least two; found {len(set(labels))} with images"
        )
    return paths, labels


def _fit(args) -> None:
    import joblib

    from ._classifier import ProtoPNetClassifier

    paths, labels = folder_dataset(args.dir)
    params = cli_values(args)
    if params["backbone"] == "small":
        from .backbones import SmallCNN

        params["backbone"] = SmallCNN()
    clf = ProtoPNetClassifier(**params, verbose=0 if args.quiet else 1)
    print(f"fitting on {len(paths)} images of {len(set(labels))} classes from {args.dir}")
    clf.fit(paths, labels)
    folder = os.path.dirname(args.out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    joblib.dump(clf, args.out)
    print(f"model saved to {args.out}")


def _load(path: str):
    import joblib

    if not os.path.isfile(path):
        raise SystemExit(f"protopnet: model file not found: {path!r}")
    return joblib.load(path)


def _predict(args) -> None:
    clf = _load(args.model)
    proba = clf.predict_proba(args.images)
    for path, p in zip(args.images, proba):
        k = int(p.argmax())
        print(f"{path}\t{clf.classes_[k]}\t{p[k]:.4f}")


def _explain(args) -> None:
    from ._report import write_sheets_and_report

    clf = _load(args.model)
    explanations = clf.explain(args.images, top_k=args.top_k)
    report = os.path.join(args.out, "report.html")
    sheets = write_sheets_and_report(clf, explanations, args.out, report)
    for explanation, sheet in zip(explanations, sheets):
        print(f"{explanation.name}\t{explanation.predicted}\t{sheet}")
    print(f"report written to {report}")


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.out, verbose=0 if args.quiet else 1)
    elif args.command == "fit":
        _fit(args)
    elif args.command == "predict":
        _predict(args)
    elif args.command == "explain":
        _explain(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
