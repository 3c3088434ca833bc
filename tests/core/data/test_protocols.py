"""Protocols: base2novel is CoOp's base-to-novel task; all keeps the same few-shot draw for every class."""

from __future__ import annotations

from mergetune.core.config import Protocol
from mergetune.core.data import base_to_novel
from mergetune.core.data.builtin import open_builtin
from mergetune.core.data.protocols import all_classes_task, make_task

OPTIONS = {"num_classes": 7, "train_per_class": 6, "val_per_class": 3, "test_per_class": 2}


def test_all_protocol_covers_every_class_with_the_same_draw() -> None:
    ds = open_builtin(OPTIONS)
    b2n = make_task(ds, Protocol.base2novel, shots=4, seed=3)
    assert b2n.split_sha256 == base_to_novel(ds, 4, 3).split_sha256
    assert len(b2n.base_classnames) == 4 and len(b2n.novel_classnames) == 3  # ceil(7 / 2)

    task = make_task(ds, "all", shots=4, seed=3)
    assert task.base_classnames == ds.classnames and task.novel_classnames == ds.classnames
    assert sorted({r.label for r in task.train}) == list(range(7))
    assert len(task.train) == 7 * 4 and len(task.val) == 7 * 3
    assert len(task.test_base) == len(task.test_novel) == 7 * 2
    # the base classes' few-shot items are the ones base2novel draws with the same seed
    base_items = {r.key for r in task.train if r.label < 4}
    assert base_items == {r.key for r in b2n.train}
    assert task.split_sha256 != b2n.split_sha256
    assert all_classes_task(ds, 4, 3).split_sha256 == task.split_sha256
    assert all_classes_task(ds, 4, 4).split_sha256 != task.split_sha256
