"""Logging to the console and to a file in OUTPUT_DIR."""
import logging
import os
import sys

from utils import distributed


# The project's module loggers (logging.getLogger(__name__)) report INFO too; their records reach the
# run's console and log file through the root logger, whose handlers setup_logger sets.
PROJECT_PACKAGES = ('config', 'datasets', 'evaluation', 'loss', 'model', 'processor', 'reporting', 'solver', 'utils')

# `logger.info(text, extra=FILE_ONLY)`: for the log file only (the full config, long tables), not the terminal.
FILE_ONLY = {'file_only': True}


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record comes (it may be replaced after setup, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _route_module_loggers(handlers: list) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, 'msp_run_handler', False)]:
        root.removeHandler(handler)
    for handler in handlers:
        handler.msp_run_handler = True
        root.addHandler(handler)
    level = logging.INFO if distributed.is_main() else logging.WARNING
    for package in PROJECT_PACKAGES:
        logging.getLogger(package).setLevel(level)


def setup_logger(name: str, output_dir: str, filename: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s')
    console = _CurrentStdout()
    console.setFormatter(formatter)
    console.addFilter(lambda record: not getattr(record, 'file_only', False))
    logger.addHandler(console)
    if output_dir:
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), mode='a')
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    _route_module_loggers(list(logger.handlers))
    return logger
