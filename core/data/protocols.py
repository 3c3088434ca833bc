"""The task a job trains and evaluates on, per protocol (ALGORITHM.md sections 4 and 6b).

- ``base2novel`` (CoOp's base-to-novel protocol): :func:`mergetune.core.data.base_to_novel`, unchanged.
- ``all`` (the checkpoint was trained on every class): the same few-shot draw (one ``random.Random(seed)``:
  ``shots`` per class from train, then ``min(shots, 4)`` per class from val, train items standing in for a
  missing val split), kept for every class. Training, the zero-shot anchor and the class-specific context
  cover all classes. The evaluation machinery reports two splits; under ``all`` both are the whole test
  split over the whole class list: ``base`` with the checkpoint's own contexts, ``novel`` with the context a
  class without its own row would get (the same for a generic context; the class mean for a CSC one). Reports
  label them "all classes" and "all classes, shared context".
"""

from __future__ import annotations

import hashlib

from mergetune.core.config import Protocol
from mergetune.core.data.base import B2NTask, Dataset, Record, base_to_novel, fewshot_train_val


def all_classes_task(ds: Dataset, shots: int, seed: int) -> B2NTask:
    """Every class as the training and evaluation class list (see the module docstring)."""
    train, val, labels = fewshot_train_val(ds, shots, seed)
    mapping = {lab: i for i, lab in enumerate(labels)}

    def relabel(records: list[Record]) -> list[Record]:
        return [Record(r.key, mapping[r.label]) for r in records if r.label in mapping]

    test = relabel(ds.splits.get("test", []))
    names = [ds.classnames[i] for i in labels]
    task = B2NTask(
        dataset=ds,
        base_classnames=names,
        novel_classnames=list(names),
        base_labels=labels,
        novel_labels=list(labels),
        train=relabel(train),
        val=relabel(val),
        test_base=test,
        test_novel=list(test),
        template=ds.template,
        shots=shots,
        seed=seed,
        split_sha256="",
    )
    h = hashlib.sha256()
    h.update(f"{ds.name}\n{ds.identity()}shots={shots}\nseed={seed}\nprotocol=all\n".encode())
    h.update(("\n".join(names) + "\n").encode())
    for tag in ("train", "val", "test_base"):
        for r in getattr(task, tag):
            h.update(f"{tag}\t{r.key}\t{r.label}\n".encode())
    task.split_sha256 = h.hexdigest()
    return task


def make_task(ds: Dataset, protocol: Protocol | str, shots: int, seed: int) -> B2NTask:
    """The job's task under ``protocol``."""
    if Protocol(protocol) == Protocol.all:
        return all_classes_task(ds, shots, seed)
    return base_to_novel(ds, shots, seed)


def context_classes(task: B2NTask, protocol: Protocol | str) -> list[str]:
    """The classes a checkpoint's contexts cover (one CSC row each, in order): the base half or all."""
    return list(task.base_classnames)


#: How reports label the two evaluation splits under each protocol.
SPLIT_LABELS: dict[str, dict[str, str]] = {
    Protocol.base2novel.value: {"base": "base classes", "novel": "novel classes"},
    Protocol.all.value: {"base": "all classes", "novel": "all classes, shared context"},
}
