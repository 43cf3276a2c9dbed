"""Logging to the console and to a file in OUTPUT_DIR."""
import logging
import os
import sys


def setup_logger(name: str, output_dir: str, filename: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s')
    console = logging.StreamHandler(stream=sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if output_dir:
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), mode='a')
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
