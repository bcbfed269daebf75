"""Faults injected on purpose, to test that retries and resumes recover (and for game days).

``$RECMODEL_FAIL_ONCE=STAGE[:POINT][:always]`` makes the named step fail at the named point:
``pretrain:epoch0`` fails once, right after pretraining saved its state for epoch 0, and the
``@retry`` attempt continues from that state; ``finetune:always`` fails every attempt of
``finetune``, leaving a failed run to ``resume``. Unset, nothing happens.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from recmodel.retriever.train_state import filesystem_of, make_parent

log = logging.getLogger(__name__)

FAIL_ONCE_ENV = "RECMODEL_FAIL_ONCE"
_POINT = re.compile(r"start|epoch\d+")


class InjectedFault(RuntimeError):
    """A fault raised on purpose through ``$RECMODEL_FAIL_ONCE``."""


@dataclass(frozen=True)
class FaultSpec:
    """Where to fail: ``STAGE[:POINT][:always]``.

    ``STAGE`` is a flow step name (``pretrain``, ``pretrain_no_logq``, ``finetune``);
    ``POINT`` is ``start`` (the default) or ``epochK``: right after epoch K (0-based, as in
    ``train_history``) was trained and its state saved. Without ``always`` the fault fires
    once per run and step (a marker beside the training state records it), so a retry
    proceeds; with ``always`` every attempt fails.
    """

    stage: str
    point: str = "start"
    always: bool = False

    @classmethod
    def parse(cls, text: str) -> FaultSpec | None:
        """The spec in ``text``, None for an empty string; ValueError when malformed."""
        parts = [p.strip() for p in text.split(":")] if text.strip() else []
        if not parts:
            return None
        always = len(parts) > 1 and parts[-1] == "always"
        parts = parts[:-1] if always else parts
        if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not _POINT.fullmatch(parts[1])):
            raise ValueError(
                f"${FAIL_ONCE_ENV} must look like STAGE[:start|:epochK][:always], got {text!r}"
            )
        return cls(parts[0], parts[1] if len(parts) == 2 else "start", always)


def inject_fault(stage: str, point: str, marker_dir: str) -> None:
    """Raise :class:`InjectedFault` when ``$RECMODEL_FAIL_ONCE`` names ``stage`` and ``point``.

    Args:
        stage: the step this code runs in.
        point: ``start`` or ``epochK``.
        marker_dir: durable directory (local or object store) of the once-only marker; the
            same for every attempt of the step.
    """
    spec = FaultSpec.parse(os.environ.get(FAIL_ONCE_ENV, ""))
    if spec is None or (spec.stage, spec.point) != (stage, point):
        return
    if not spec.always:
        fs, directory = filesystem_of(marker_dir)
        marker = f"{directory.rstrip('/')}/fault-{stage}-{point}.done"
        if fs.get_file_info(marker).type == pafs.FileType.File:
            return
        make_parent(fs, marker)
        with fs.open_output_stream(marker) as fh:
            fh.write(b"injected\n")
    log.warning("injecting a fault at %s:%s ($%s)", stage, point, FAIL_ONCE_ENV)
    raise InjectedFault(f"fault injected at {stage}:{point} by ${FAIL_ONCE_ENV}")
