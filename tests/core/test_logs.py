import logging

import pytest

from recmodel.core.logs import PACKAGE, setup_logging


@pytest.fixture
def restored_logging():
    package, root = logging.getLogger(PACKAGE), logging.getLogger()
    saved = package.handlers[:], package.level, package.propagate, root.handlers[:], root.level
    yield
    package.handlers[:], package.level, package.propagate = saved[:3]
    root.handlers[:], root.level = saved[3:]


def test_progress_goes_to_stdout_and_errors_to_stderr(capsys, restored_logging):
    logging.getLogger().handlers.clear()  # as in a fresh process
    setup_logging()
    setup_logging()  # a second call does not double the lines
    log = logging.getLogger("recmodel.test")
    log.info("epoch 1 done")
    log.warning("a warning")
    log.error("bad input")
    logging.getLogger("botocore.credentials").info("found credentials")
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "INFO recmodel.test: epoch 1 done",
        "WARNING recmodel.test: a warning",
    ]
    assert "ERROR recmodel.test: bad input" in err
    assert "found credentials" in err and "found credentials" not in out  # not the package's
