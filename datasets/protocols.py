"""Evaluation protocols as datasets declare them, and the protocol-list files some downloads ship.

A protocol is which images are queries, which are the gallery, and which gallery images the evaluator
removes for each query (a removal rule from utils/vocabulary.py). Every dataset declares its own by
name (`ReIDDataset.protocols`); TEST.EVAL_MODE picks one of them, or ALL.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Hashable

from utils.errors import UserError
from utils.vocabulary import ALL_PROTOCOLS, REMOVAL_RULES

Item = tuple[str, int, int, int]  # (img_path, pid, camid, viewid)

# Protocol names end up in file names (results_<PROTOCOL>.json), so they stay plain.
PROTOCOL_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_+-]*')


@dataclass
class Protocol:
    query: list[Item] = field(repr=False)
    gallery: list[Item] = field(repr=False)
    removal: str

    def __post_init__(self):
        if self.removal not in REMOVAL_RULES:
            raise UserError(f"removal rule '{self.removal}' is unknown; choose one of {', '.join(REMOVAL_RULES)}")


def check_protocol_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not PROTOCOL_NAME.fullmatch(name) or name == ALL_PROTOCOLS:
        raise UserError(f"{where}: protocol name {name!r} must be letters, digits, '_', '+' or '-' "
                        f"(and not {ALL_PROTOCOLS}, which means every protocol)")
    return name


def is_query_line(relative_path: str) -> bool:
    """A list line is a query when its first folder is `query` or starts with `query_` (query/,
    query_c0/): the rule of the published protocol-list loaders."""
    first_folder = relative_path.replace('\\', '/').split('/', 1)[0]
    return first_folder.split('_', 1)[0] == 'query'


def read_protocol_list(list_path: str, base_dir: str, parse: Callable[[str], tuple[Hashable, int, int]],
                       skip_junk: bool = True) -> tuple[list, list]:
    """(query, gallery) items with raw pids from a protocol list: one image path per line, relative to
    `base_dir`. Blank lines are skipped, and junk (pid -1) when `skip_junk`; a missing image stops with
    its line."""
    query, gallery = [], []
    with open(list_path, encoding='utf-8') as handle:
        lines = handle.read().splitlines()
    for number, line in enumerate(lines, start=1):
        relative = line.strip()
        if not relative:
            continue
        path = os.path.join(base_dir, relative)
        if not os.path.isfile(path):
            raise UserError(f"{list_path} line {number}: image '{path}' does not exist")
        pid, camid, viewid = parse(os.path.basename(relative))
        if skip_junk and pid == -1:
            continue
        (query if is_query_line(relative) else gallery).append((path, pid, camid, viewid))
    if not query or not gallery:
        raise UserError(f"protocol list '{list_path}' names no {'query' if not query else 'gallery'} images")
    return query, gallery


def read_protocol_lists(root: str, base_dir: str, list_files: dict[str, str], dataset: str,
                        parse: Callable[[str], tuple[Hashable, int, int]], skip_junk: bool = True
                        ) -> dict[str, tuple[list, list]]:
    """{protocol: (query, gallery)} for each list file present in `root`; at least one must be."""
    found = {name: read_protocol_list(os.path.join(root, file), base_dir, parse, skip_junk)
             for name, file in list_files.items() if os.path.isfile(os.path.join(root, file))}
    if not found:
        raise UserError(f"DATASETS.ROOT_DIR '{root}' holds none of the {dataset} protocol lists "
                        f"({', '.join(list_files.values())})")
    return found


def all_query_and_gallery(protocols: dict[str, Protocol]) -> tuple[list[Item], list[Item]]:
    """Every query and every gallery item of the protocols, each image once, in first-seen order."""
    query = {item[0]: item for protocol in protocols.values() for item in protocol.query}
    gallery = {item[0]: item for protocol in protocols.values() for item in protocol.gallery}
    return list(query.values()), list(gallery.values())
