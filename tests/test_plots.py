"""plots.py: PNG files from hand-made histories and explanations; a one-line note without matplotlib."""

from __future__ import annotations

import sys

import pytest

from plots import MATPLOTLIB_MISSING, plot_influence, plot_time_to_quality, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"
HISTORY = [{"epoch": e, "train_seconds": 30.0 * e, "total": 9 - e, "item_prediction": 8 - e, "next_item": 7 - e,
            "val_NDCG@10": 0.02 * e} for e in range(1, 6)]
EXPLANATION = {"recommended": {"title": "Toy Story (1995)", "rank": 1},
               "drivers": [{"title": "Aladdin (1992)", "position": 1, "score_drop": 0.8},
                           {"title": "Heat (1995)", "position": 2, "score_drop": -0.1}]}


@pytest.fixture
def no_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError


def test_pictures_are_png_files_and_leave_no_temporary(tmp_path):
    pytest.importorskip("matplotlib", reason="draws the pictures (requirements-extra.txt)")
    drawn = [plot_training_curves(HISTORY, tmp_path / "curves.png", title="run"),
             plot_time_to_quality({"a": [HISTORY, HISTORY[:3]], "b": [HISTORY]}, tmp_path / "ttq.png"),
             plot_influence(EXPLANATION, tmp_path / "why.png")]
    assert drawn == [tmp_path / "curves.png", tmp_path / "ttq.png", tmp_path / "why.png"]
    assert all(path.read_bytes()[:8] == PNG for path in drawn)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "ttq.png", "why.png"]


def test_without_matplotlib_one_line_note_and_no_file(tmp_path, no_matplotlib, capsys):
    assert plot_training_curves(HISTORY, tmp_path / "curves.png") is None
    assert plot_influence(EXPLANATION, tmp_path / "why.png") is None
    lines = capsys.readouterr().err.splitlines()
    assert lines == [MATPLOTLIB_MISSING.format(tmp_path / name) for name in ("curves.png", "why.png")]
    assert list(tmp_path.iterdir()) == []
