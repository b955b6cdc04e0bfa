"""The ``protopnet`` command end to end: fit a folder, predict, explain."""

import csv
import io
import os
import re
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image

from sklearn_protopnet import ProtoPNetClassifier
from sklearn_protopnet._cli import UserError, folder_dataset, main

from .conftest import make_bar_images, write_pngs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    images, labels = make_bar_images(12, seed=5)
    root = tmp_path_factory.mktemp("classes")
    for name, label in (("horizontal", 0), ("vertical", 1)):
        write_pngs(str(root / name), images[labels == label])
    (root / "notes.txt").write_text("not a class folder")
    return str(root)


@pytest.fixture(scope="module")
def cli_model(class_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("model") / "model.protopnet")
    assert main(["fit", class_folder, "--out", out, *FIT_OPTIONS]) == 0
    return out


FIT_OPTIONS = ["--backbone", "small", "--image-size", "16", "--prototypes-per-class", "2",
               "--prototype-dim", "8", "--warm-epochs", "1", "--joint-epochs", "1",
               "--batch-size", "16", "--no-augment", "--quiet"]


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_folder_dataset(class_folder, tmp_path):
    paths, labels = folder_dataset(class_folder)
    assert len(paths) == 24 and sorted(set(labels)) == ["horizontal", "vertical"]
    assert all(os.path.basename(os.path.dirname(p)) == y for p, y in zip(paths, labels))
    write_pngs(str(tmp_path / "only"), make_bar_images(2)[0])
    with pytest.raises(UserError, match="at least two"):
        folder_dataset(str(tmp_path))
    with pytest.raises(UserError, match="not a folder"):
        folder_dataset(str(tmp_path / "missing"))


def test_fit_saves_the_pickle_free_model_file_by_default(cli_model, class_folder, tmp_path):
    clf = ProtoPNetClassifier.load(cli_model)  # not a pickle: joblib cannot read it
    np.testing.assert_array_equal(clf.classes_, ["horizontal", "vertical"])
    assert clf.n_prototypes_ == 4 and clf.image_size_ == (16, 16)
    # the same command line gives the same model: --backbone small is seeded
    # by --random-state (0 by default), and --format joblib writes a pickle
    again = str(tmp_path / "again.joblib")
    assert main(["fit", class_folder, "--out", again, "--format", "joblib", *FIT_OPTIONS]) == 0
    paths, _ = folder_dataset(class_folder)
    np.testing.assert_array_equal(joblib.load(again).predict_proba(paths),
                                  clf.predict_proba(paths))
    other = str(tmp_path / "other.protopnet")
    assert main(["fit", class_folder, "--out", other, *FIT_OPTIONS,
                 "--random-state", "1"]) == 0
    assert not np.array_equal(ProtoPNetClassifier.load(other).coef_, clf.coef_)


def test_predict_writes_csv_of_labels_and_every_class_probability(cli_model, class_folder,
                                                                  capsys, tmp_path):
    paths, labels = folder_dataset(class_folder)
    chosen = paths[:3] + [paths[-1]]
    assert main(["predict", cli_model, *chosen]) == 0
    rows = _csv(capsys.readouterr().out)
    clf = ProtoPNetClassifier.load(cli_model)
    assert rows[0] == ["path", "label", "proba_horizontal", "proba_vertical"]
    assert len(rows) == 1 + len(chosen)
    expected, proba = clf.predict(chosen), clf.predict_proba(chosen)
    for row, path, label, p in zip(rows[1:], chosen, expected, proba):
        assert row[0] == path and row[1] == label
        # every class's probability, as the model computes it (6 significant digits)
        np.testing.assert_allclose([float(v) for v in row[2:]], p, rtol=1e-5, atol=1e-7)
    # a folder stands for its image files, recursively and sorted; --out writes a file
    out = tmp_path / "predictions.csv"
    assert main(["predict", cli_model, class_folder, "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    rows = _csv(out.read_text(encoding="utf-8"))
    assert [r[0] for r in rows[1:]] == sorted(paths)
    assert [r[1] for r in rows[1:]] == list(clf.predict(sorted(paths)))


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp, folder: ["predict", "MODEL", str(tmp / "nope.png")],
     "image file not found: '.*nope.png'"),
    (lambda tmp, folder: ["predict", "MODEL", str(tmp)], "no image files"),
    (lambda tmp, folder: ["predict", str(tmp / "nope.protopnet"), "x.png"],
     "model file not found"),
    (lambda tmp, folder: ["explain", "MODEL", str(tmp / "text.png"), "--out", str(tmp)],
     "cannot read image file"),
    (lambda tmp, folder: ["fit", str(tmp / "missing"), "--out", str(tmp / "m")],
     "not a folder"),
])
def test_a_bad_path_is_one_line_and_a_nonzero_exit(cli_model, class_folder, tmp_path, capsys,
                                                  make_bad, message):
    (tmp_path / "text.png").write_text("not an image")
    argv = [cli_model if a == "MODEL" else a for a in make_bad(tmp_path, class_folder)]
    if argv[0] == "predict" and argv[2] == str(tmp_path):
        (tmp_path / "text.png").unlink()  # a folder without image files
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"protopnet {argv[0]}: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in captured.err


def test_explain_writes_sheets_and_report(cli_model, class_folder, tmp_path, capsys):
    paths, _ = folder_dataset(class_folder)
    chosen = [paths[0], paths[12]]  # horizontal/0000.png and vertical/0000.png
    out = tmp_path / "explained"
    assert main(["explain", cli_model, *chosen, "--out", str(out), "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "report written to" in printed
    sheets = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(sheets) == 2  # same file names in two folders do not overwrite each other
    for name in sheets:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 300
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("<section") == 2 and all(p in report for p in chosen)


def test_explain_into_the_images_own_folder_leaves_them_untouched(cli_model, class_folder,
                                                                    tmp_path):
    import shutil

    paths, _ = folder_dataset(class_folder)
    folder = tmp_path / "images"
    folder.mkdir()
    chosen = [shutil.copy(paths[0], folder / "a.png"), shutil.copy(paths[12], folder / "b.png")]
    before = {p: open(p, "rb").read() for p in chosen}
    assert main(["explain", cli_model, *map(str, chosen), "--out", str(folder)]) == 0
    assert all(open(p, "rb").read() == data for p, data in before.items())
    assert sorted(os.listdir(folder)) == ["a-2.png", "a.png", "b-2.png", "b.png", "report.html"]
    with Image.open(folder / "a-2.png") as sheet:
        assert sheet.size[0] > 300  # a scoring sheet, not a copy of the 16 px image


def test_explain_top_k(cli_model, class_folder, tmp_path, capsys):
    paths, _ = folder_dataset(class_folder)
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit):
            main(["explain", cli_model, paths[0], "--out", str(tmp_path), "--top-k", bad])
        assert "expected an int >= 1 or 'all'" in capsys.readouterr().err
    out = tmp_path / "all"
    assert main(["explain", cli_model, paths[0], "--out", str(out), "--top-k", "all"]) == 0
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "other prototypes" not in report  # every prototype is shown


@pytest.mark.slow
def test_command_runs_as_a_process(cli_model, class_folder):
    paths, _ = folder_dataset(class_folder)
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_protopnet._cli", "predict", cli_model, paths[0]],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _csv(result.stdout)[1][0] == paths[0]
    bad = subprocess.run(
        [sys.executable, "-m", "sklearn_protopnet._cli", "predict", cli_model, "nope.png"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope.png" in bad.stderr


def test_fit_help_is_plain_text(capsys):
    """The options' help comes from the docstrings, without their markup, and
    the backbone's names what a command line can pass."""
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and ":class:" not in text
    assert "'small'" in text and "mapping (N, 3, H, W)" not in text
    # the docstring's quotes are gone, its words are kept
    assert '"DEFAULT"' in text and "state_dict file" in text


def test_plain_text_removes_roles_and_quotes():
    from sklearn_protopnet._params import plain_text

    assert plain_text("see :func:`sklearn_protopnet.list_backbones` and "
                      ":class:`~sklearn_protopnet.backbones.SmallCNN`, ``x=1`` or `y`") == (
        "see sklearn_protopnet.list_backbones and SmallCNN, x=1 or y")


def test_separation_coef_takes_auto_or_a_number():
    import argparse

    from sklearn_protopnet._params import add_cli_options

    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    assert parser.parse_args([]).separation_coef == "auto"
    assert parser.parse_args(["--separation-coef", "0.3"]).separation_coef == 0.3
    assert parser.parse_args(["--separation-coef", "auto"]).separation_coef == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--separation-coef", "strong"])
