"""One log for the library, the widgets and the CLI, so a bug report can carry the traceback.

Failures shown to the user as one line (:func:`failure`) are written here with
their traceback. The file is ``cellunet.log`` in the user log folder
(``$CELLUNET_LOG_DIR`` overrides it; :func:`log_path`); ``cellunet --verbose``
also prints the log to the terminal.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("napari_cellunet")
_file_handler: logging.Handler | None = None
_file_path: Path | None = None


def log_path() -> Path:
    folder = os.environ.get("CELLUNET_LOG_DIR")
    if not folder:
        from platformdirs import user_log_dir

        folder = user_log_dir("napari-cellunet")
    return Path(folder) / "cellunet.log"


def _ensure_file() -> None:
    """Attach the log file (lazily: importing the package writes nothing; again if the folder changed)."""
    global _file_handler, _file_path
    path = log_path()
    if _file_handler is not None and path == _file_path:
        return
    if _file_handler is not None:
        logger.removeHandler(_file_handler)
        _file_handler.close()
    _file_path = path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _file_handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:  # a read-only home: log nowhere rather than fail
        _file_handler = logging.NullHandler()
    _file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(_file_handler)
    logger.setLevel(min(logger.level or logging.INFO, logging.INFO))


def failure(what: str, err: BaseException) -> str:
    """Log ``err`` with its traceback; return the one-line message for the user: ``"<what>: <err>"``."""
    _ensure_file()
    message = f"{what}: {str(err) or type(err).__name__}"
    logger.error(message, exc_info=(type(err), err, err.__traceback__))
    return message


def info(message: str) -> None:
    _ensure_file()
    logger.info(message)


def warning(message: str) -> None:
    _ensure_file()
    logger.warning(message)


def verbose() -> None:
    """Also print the log (with tracebacks) to stderr."""
    _ensure_file()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
