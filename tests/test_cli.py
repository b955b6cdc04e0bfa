"""The ``protopnet`` command end to end: fit a folder, predict, explain."""

import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image

from sklearn_protopnet._cli import folder_dataset, main

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
    out = str(tmp_path_factory.mktemp("model") / "model.joblib")
    code = main(["fit", class_folder, "--out", out, "--backbone", "small", "--image-size", "16",
                 "--prototypes-per-class", "2", "--prototype-dim", "8", "--warm-epochs", "1",
                 "--joint-epochs", "1", "--batch-size", "16", "--no-augment", "--quiet"])
    assert code == 0
    return out


def test_folder_dataset(class_folder, tmp_path):
    paths, labels = folder_dataset(class_folder)
    assert len(paths) == 24 and sorted(set(labels)) == ["horizontal", "vertical"]
    assert all(os.path.basename(os.path.dirname(p)) == y for p, y in zip(paths, labels))
    write_pngs(str(tmp_path / "only"), make_bar_images(2)[0])
    with pytest.raises(SystemExit, match="at least two"):
        folder_dataset(str(tmp_path))
    with pytest.raises(SystemExit, match="not a folder"):
        folder_dataset(str(tmp_path / "missing"))


def test_fit_saves_a_model(cli_model):
    clf = joblib.load(cli_model)
    np.testing.assert_array_equal(clf.classes_, ["horizontal", "vertical"])
    assert clf.n_prototypes_ == 4 and clf.image_size_ == (16, 16)


def test_predict_prints_one_line_per_image(cli_model, class_folder, capsys):
    paths, labels = folder_dataset(class_folder)
    assert main(["predict", cli_model, *paths[:3], paths[-1]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    clf = joblib.load(cli_model)
    expected = clf.predict(paths[:3] + [paths[-1]])
    for line, path, label in zip(lines, paths[:3] + [paths[-1]], expected):
        name, predicted, probability = line.split("\t")
        assert name == path and predicted == label and 0.5 <= float(probability) <= 1


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


def test_missing_model_is_a_clear_error(tmp_path, class_folder):
    paths, _ = folder_dataset(class_folder)
    with pytest.raises(SystemExit, match="model file not found"):
        main(["predict", str(tmp_path / "nope.joblib"), paths[0]])


def test_command_runs_as_a_process(cli_model, class_folder):
    paths, _ = folder_dataset(class_folder)
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_protopnet._cli", "predict", cli_model, paths[0]],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(paths[0] + "\t")
