"""The house's rules that code can check: utils/ is a leaf room."""
import ast
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
