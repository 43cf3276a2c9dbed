"""A user's own dataset from CSV files, without writing code (DATASETS.NAMES csv).

DATASETS.ROOT_DIR holds either `train.csv`, `query.csv` and `gallery.csv`, or one `dataset.csv` with a
`split` column (train, query or gallery). Every CSV has a header naming at least the columns
`path` (image path, relative to ROOT_DIR or absolute), `pid` (person id: any label; -1 = junk, skipped),
`camera` (an integer >= 0) and `view` (sky or ground); other columns are ignored.

An optional `protocols.yml` next to them declares the evaluation protocols and whether train and test
identities are disjoint:

    identities_disjoint: true        # default; an identity in train and in query/gallery is an error
    protocols:                       # default: DDC, every query against the whole gallery, same_camera
      S2G:
        query: {view: sky}           # or {list: s2g_query.txt}: paths as in the CSV, one a line;
        gallery: {view: ground}      #    left out: every query (every gallery image)
        removal: same_view           # same_view, same_camera or none (utils/vocabulary.py)
"""
from __future__ import annotations

import csv
import os

import yaml

from utils.errors import UserError
from utils.vocabulary import REMOVAL_RULES, SAME_CAMERA, VIEW_IDS

from .bases import ReIDDataset
from .protocols import Item, Protocol, check_protocol_name

SPLITS = ('train', 'query', 'gallery')
COLUMNS = ('path', 'pid', 'camera', 'view')
SINGLE_FILE = 'dataset.csv'
PROTOCOL_FILE = 'protocols.yml'
JUNK_PID = '-1'

Row = tuple[str, str, int, int]  # (image path, person label, camid, viewid)


def _parse_row(row: dict, where: str, root: str) -> Row:
    values = {column: (row.get(column) or '').strip() for column in COLUMNS}
    empty = [column for column, value in values.items() if not value]
    if empty:
        raise UserError(f"{where}: empty {', '.join(empty)}")
    if not values['camera'].isdigit():
        raise UserError(f"{where}: camera '{values['camera']}' is not an integer >= 0")
    if values['view'] not in VIEW_IDS:
        raise UserError(f"{where}: view '{values['view']}' is not one of {', '.join(VIEW_IDS)}")
    path = os.path.join(root, values['path'])
    if not os.path.isfile(path):
        raise UserError(f"{where}: image '{path}' does not exist")
    return path, values['pid'], int(values['camera']), VIEW_IDS[values['view']]


def read_csv_rows(csv_path: str, root: str, with_split: bool) -> dict[str, list[Row]]:
    """{split: rows} of one CSV (all rows under the split of the file name unless `with_split`)."""
    if not os.path.isfile(csv_path):
        raise UserError(f"CSV file '{csv_path}' does not exist")
    required = COLUMNS + (('split',) if with_split else ())
    by_split: dict[str, list[Row]] = {split: [] for split in SPLITS}
    default_split = os.path.splitext(os.path.basename(csv_path))[0]
    with open(csv_path, newline='', encoding='utf-8') as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in required if column not in header]
        if missing:
            raise UserError(f"{csv_path}: the header lacks the column(s) {', '.join(missing)} "
                            f"(needs {', '.join(required)})")
        reader.fieldnames = header
        try:
            for row in reader:
                where = f"{csv_path} line {reader.line_num}"
                if None in row or any(value is None for value in row.values()):
                    raise UserError(f"{where}: expected {len(header)} fields, like the header")
                split = (row['split'] or '').strip() if with_split else default_split
                if split not in by_split:
                    raise UserError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}")
                by_split[split].append(_parse_row(row, where, root))
        except csv.Error as err:
            raise UserError(f"{csv_path} line {reader.line_num}: {err}") from None
    return by_split


def _read_protocol_file(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as handle:
            spec = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        raise UserError(f"{path} is not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    unknown = set(spec) - {'identities_disjoint', 'protocols'} if isinstance(spec, dict) else None
    if unknown is None or unknown:
        raise UserError(f"{path}: expected the keys identities_disjoint and protocols"
                        + (f", not {', '.join(sorted(unknown))}" if unknown else ''))
    return spec


class CSVDataset(ReIDDataset):
    """A dataset described by CSV files under DATASETS.ROOT_DIR (see the module docstring)."""

    name = 'csv'

    def __init__(self, root: str):
        super().__init__(root)
        single = os.path.join(self.root, SINGLE_FILE)
        if os.path.isfile(single):
            rows = read_csv_rows(single, self.root, with_split=True)
        else:
            rows = {split: [] for split in SPLITS}
            for split in SPLITS:
                rows.update({split: read_csv_rows(os.path.join(self.root, f'{split}.csv'), self.root,
                                                  with_split=False)[split]})
        for split, split_rows in rows.items():
            if not any(pid != JUNK_PID for _, pid, _, _ in split_rows):
                raise UserError(f"the csv dataset in '{self.root}' has no {split} images")
        protocol_path = os.path.join(self.root, PROTOCOL_FILE)
        spec = _read_protocol_file(protocol_path) if os.path.isfile(protocol_path) else {}
        disjoint = spec.get('identities_disjoint', True)
        if not isinstance(disjoint, bool):
            raise UserError(f"{protocol_path}: identities_disjoint must be true or false")
        if disjoint:
            self._check_disjoint(rows)
        # Labels of every split share one numbering, so query and gallery agree.
        pid_of = {label: pid for pid, label in enumerate(sorted(
            {label for split_rows in rows.values() for _, label, _, _ in split_rows if label != JUNK_PID}))}
        items = {split: [(path, pid_of[label], camid, viewid) for path, label, camid, viewid in split_rows
                         if label != JUNK_PID] for split, split_rows in rows.items()}
        protocols = self._protocols(spec.get('protocols'), items['query'], items['gallery'], protocol_path)
        self._finish(items['train'], items['query'], items['gallery'], protocols)

    def _check_disjoint(self, rows: dict[str, list[Row]]) -> None:
        train = {label for _, label, _, _ in rows['train']} - {JUNK_PID}
        test = {label for split in ('query', 'gallery') for _, label, _, _ in rows[split]}
        shared = sorted(train & test)
        if shared:
            raise UserError(f"the csv dataset in '{self.root}' has {len(shared)} identities in both train and "
                            f"query/gallery (e.g. '{shared[0]}'), but {PROTOCOL_FILE} says identities_disjoint "
                            f"(the default); set identities_disjoint: false if that is meant")

    def _protocols(self, spec, query: list[Item], gallery: list[Item], path: str) -> dict[str, Protocol]:
        if spec is None:
            return {'DDC': Protocol(query, gallery, SAME_CAMERA)}
        if not isinstance(spec, dict) or not spec:
            raise UserError(f"{path}: protocols must map protocol names to their query, gallery and removal")
        protocols = {}
        for name, entry in spec.items():
            where = f"{path}: protocol {name}"
            check_protocol_name(name, path)
            if not isinstance(entry, dict) or set(entry) - {'query', 'gallery', 'removal'}:
                raise UserError(f"{where} must have only the keys query, gallery and removal")
            removal = entry.get('removal', SAME_CAMERA)
            if removal not in REMOVAL_RULES:
                raise UserError(f"{where}: removal '{removal}' is not one of {', '.join(REMOVAL_RULES)}")
            protocols[name] = Protocol(self._select(entry.get('query'), query, f"{where} query"),
                                       self._select(entry.get('gallery'), gallery, f"{where} gallery"), removal)
        return protocols

    def _select(self, selector, items: list[Item], where: str) -> list[Item]:
        """The items a protocol's query or gallery selector picks: all, one view, or a list file."""
        if selector is None:
            return list(items)
        if not isinstance(selector, dict) or len(selector) != 1 or not set(selector) <= {'view', 'list'}:
            raise UserError(f"{where} must be {{view: sky|ground}} or {{list: FILE}}")
        if 'view' in selector:
            if selector['view'] not in VIEW_IDS:
                raise UserError(f"{where}: view '{selector['view']}' is not one of {', '.join(VIEW_IDS)}")
            chosen = [item for item in items if item[3] == VIEW_IDS[selector['view']]]
        else:
            list_path = os.path.join(self.root, str(selector['list']))
            if not os.path.isfile(list_path):
                raise UserError(f"{where}: list file '{list_path}' does not exist")
            by_path = {os.path.normpath(item[0]): item for item in items}
            chosen = []
            with open(list_path, encoding='utf-8') as handle:
                for number, line in enumerate(handle.read().splitlines(), start=1):
                    if not line.strip():
                        continue
                    path = os.path.normpath(os.path.join(self.root, line.strip()))
                    if path not in by_path:
                        raise UserError(f"{list_path} line {number}: '{line.strip()}' is not an image of "
                                        f"this split in the CSV")
                    chosen.append(by_path[path])
        if not chosen:
            raise UserError(f"{where} selects no images")
        return chosen
