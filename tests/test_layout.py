"""The house's rules that code can check: utils/ is a leaf room; the rooms below processor/ read no config."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHER_ROOMS = {'config', 'datasets', 'evaluation', 'loss', 'model', 'processor', 'reporting', 'solver'}


def imported_packages(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding='utf-8'))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return names


def test_utils_imports_no_other_room():
    offenders = {path.name: sorted(imported_packages(path) & OTHER_ROOMS) for path in (ROOT / 'utils').glob('*.py')}
    assert {name: rooms for name, rooms in offenders.items() if rooms} == {}


BELOW_PROCESSOR = ('datasets', 'model', 'loss', 'solver', 'evaluation', 'reporting')
CONFIG_KEY_READ = re.compile(r'\bcfg\.[A-Z]')  # e.g. cfg.MODEL.NAME


def test_rooms_below_processor_read_no_config_key():
    """processor/settings.py turns the config into the settings these rooms take."""
    readers = sorted(f'{path.relative_to(ROOT)}:{number}' for room in BELOW_PROCESSOR
                     for path in (ROOT / room).rglob('*.py')
                     for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1)
                     if CONFIG_KEY_READ.search(line))
    assert readers == []
