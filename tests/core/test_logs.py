import logging

from recmodel.core.logs import setup_logging


def test_progress_goes_to_stdout_and_errors_to_stderr(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging()
        log = logging.getLogger("recmodel.test")
        log.info("epoch 1 done")
        log.warning("a warning")
        log.error("bad input")
        out, err = capsys.readouterr()
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    assert "INFO recmodel.test: epoch 1 done" in out and "a warning" in out
    assert "bad input" not in out
    assert err.strip() == "ERROR recmodel.test: bad input"
