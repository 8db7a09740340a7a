"""Structure accuracy and per-step condition F1 on hand-made token rows."""

import numpy as np
import pytest

from leap_cli.evaluate.metrics import program_step_metrics, step_condition_metrics

M = [-100] * 4
END = [9, 20, 20, 5, 7]  # END row: last id of every vocabulary
PAD = [-100] * 5


def test_structure_and_markers_are_scored_row_by_row():
    true = np.array([[[1, 2, 3, 0, 0], M + [1], [4, 5, 6, 1, 0], M + [2], END, PAD],
                     [[1, 2, 3, 0, 0], END, PAD, PAD, PAD, PAD]])
    pred = np.array([[[1, 2, 3, 0, 0], M + [1], [4, 0, 6, 1, 0], [4, 5, 6, 1, 0], END, PAD],  # misses </loop>
                     [[2, 2, 3, 1, 0], END, PAD, PAD, PAD, PAD]])
    m = program_step_metrics(pred, true, np.array([True, True]), [9, 20, 20])
    assert m["positions"] == 3  # sub-action rows only: marker rows and END excluded
    assert m["s_verb"] == pytest.approx(2 / 3) and m["obj_a"] == pytest.approx(2 / 3) and m["hand"] == pytest.approx(2 / 3)
    assert m["structure"] == pytest.approx(4 / 5)  # 5 rows before END, the </loop> row wrong
    assert m["marker_rows"] == 2 and m["markers"] == pytest.approx(1 / 2)
    # an invalid program does not count
    m = program_step_metrics(pred, true, np.array([True, False]), [9, 20, 20])
    assert m["positions"] == 2 and m["structure"] == pytest.approx(3 / 4)


def test_step_condition_f1_and_its_chance_level():
    steps = np.array([[[1, 2, 3, 0, 0], M + [1], END, PAD]])
    P = 3
    true = np.zeros((1, 4, 2 * P))
    true[0, 0, 0] = true[0, 0, P + 1] = true[0, 1, 2] = 1  # row 0: pre c0, post c1; loop row: its condition c2
    true[0, 3, 0] = 1  # beyond END: never scored
    pred = np.zeros_like(true)
    pred[0, 0, 0] = pred[0, 0, P + 2] = pred[0, 1, 2] = 0.9  # 2 right, 1 wrong, 1 missed
    m = step_condition_metrics(pred, true, steps, np.array([True]), [9, 20, 20])
    assert m["rows"] == 2
    assert m["all"]["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["pre"]["micro_f1"] == pytest.approx(1.0) and m["post"]["micro_f1"] == pytest.approx(0.0)
    r = 3 / 12
    assert m["base_rate"] == pytest.approx(r) and m["chance_f1"] == pytest.approx(2 * r / (1 + r))
