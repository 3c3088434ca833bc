"""The CLI's sweep table (``mergetune sweep wait`` renders it itself: the client cannot import the
server's ``core.evaluation.sweep_table``) is the server's text rendering, character for character."""

from __future__ import annotations

import pytest

from mergetune.cli.output import MODEL_LABELS, MODELS, sweep_table
from mergetune.core.evaluation import sweep_table as server

A = {"zero_shot": (70, 80), "fine_tuned": (90, 60), "recovered": (88, 74),
     "feature_interpolation": (89, 66), "ensemble": (85, 70)}  # fmt: skip
B = {"zero_shot": (60, 50), "fine_tuned": (80, 40), "recovered": (76, 54)}


def _cells(point: int = 0, val: float | None = 80.0) -> list[server.CellResult]:
    return [
        server.CellResult("eurosat", 1, point, A, val),
        server.CellResult("eurosat", 2, point, B, val),
        server.CellResult("a_long_dataset_name", 1, point, B, None),
    ]


TABLES = {
    "one point": server.build_table(_cells(), datasets=["eurosat", "a_long_dataset_name"], cells_per_point=3),
    "nothing finished": server.build_table([], datasets=["eurosat", "dtd"], cells_per_point=2),
    "part finished": server.build_table(_cells()[:1], datasets=["eurosat", "dtd"]),
    "grid": server.build_table(
        _cells(0, 70.0) + _cells(1, 75.0)[:2],
        datasets=["eurosat", "a_long_dataset_name"],
        points=[{"w": 1}, {"w": 10}],
        cells_per_point=3,
    ),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_the_client_renders_the_table_as_the_server_does(name):
    table = TABLES[name]
    assert sweep_table(table) == server.to_text(table)


def test_the_model_rows_and_labels_are_the_servers():
    assert MODELS == server.MODELS and MODEL_LABELS == server.MODEL_LABELS
