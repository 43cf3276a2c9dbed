"""The documented commands: every command of a fenced `bash` or `python` block in README.md and docs/ is
either run here as written (in a scratch folder, with short schedules and the placeholders below filled
in) or listed in docs/untested_commands.md with its reason, and then checked statically (script, flags,
config keys). So a renamed flag or key, a moved script or a wrong path in the docs fails a test."""
import functools
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
UNTESTED_PAGE = ROOT / 'docs' / 'untested_commands.md'
# Pages run in this order in one scratch folder, as a user reads them: the demo first, since other
# pages use its data and checkpoint.
PAGE_ORDER = ['getting_started.md', 'README.md']

# Every run of the entry points gets these appended (later overrides win): one epoch per stage on small
# images, so the whole page set runs in a few minutes. The checkpoint of that one epoch stands for the
# documented one.
SHORT_SCHEDULE = ['INPUT.SIZE_TRAIN', '[64,32]', 'INPUT.SIZE_TEST', '[64,32]', 'INPUT.PADDING', '4',
                  'SOLVER.STAGE1.MAX_EPOCHS', '1', 'SOLVER.STAGE1.WARMUP_EPOCHS', '1',
                  'SOLVER.STAGE2.MAX_EPOCHS', '1', 'SOLVER.STAGE2.WARMUP_EPOCHS', '1', 'SOLVER.STAGE2.STEPS', '[1]',
                  'SOLVER.STAGE2.EVAL_PERIOD', '1', 'SOLVER.STAGE2.CHECKPOINT_PERIOD', '1',
                  'DATALOADER.NUM_WORKERS', '0']
# A recipe for a full-size CLIP runs here on the tiny CLIP of the same family, at the demo's batch sizes.
TINY_STAND_INS = {'ViT-B-16': ['MODEL.NAME', 'ViT-Tiny-16', 'SOLVER.STAGE1.IMS_PER_BATCH', '64',
                               'SOLVER.STAGE2.IMS_PER_BATCH', '32'],
                  'RN50': ['MODEL.NAME', 'RN-Tiny', 'SOLVER.STAGE1.IMS_PER_BATCH', '64',
                           'SOLVER.STAGE2.IMS_PER_BATCH', '32']}
ENTRY_POINTS = ('train_clipreid.py', 'test_clipreid.py', 'tools/experiment.py')
# Placeholders of the docs and what stands for them here.
PLACEHOLDERS = {
    '/path/to/mssl': 'data/mssl_synthetic',
    'logs/mssl_msp/ViT-B-16_60.pth': 'logs/mssl_msp/ViT-Tiny-16_1.pth',
    'logs/demo_mssl_synthetic/ViT-Tiny-16_60.pth': 'logs/demo_mssl_synthetic/ViT-Tiny-16_1.pth',
    'logs/msmt17_tiny/ViT-B-16_60.pth': 'logs/msmt17_tiny/ViT-Tiny-16_1.pth',
}


@dataclass(frozen=True)
class DocBlock:
    page: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(ROOT)}:{self.line}'


def doc_blocks() -> list:
    blocks = []
    for page in DOC_FILES:
        text = page.read_text(encoding='utf-8')
        for match in re.finditer(r'^```(\w*)[^\n]*\n(.*?)^```', text, re.M | re.S):
            if match.group(1) in ('bash', 'sh', 'python'):
                line = text.count('\n', 0, match.start()) + 1
                blocks.append(DocBlock(page, line, match.group(1), match.group(2)))
    return blocks


def strip_comment(line: str) -> str:
    """A shell line without its trailing `# comment` (a `#` outside quotes, after a blank)."""
    quote = ''
    for i, char in enumerate(line):
        if quote:
            quote = '' if char == quote else quote
        elif char in '\'"':
            quote = char
        elif char == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(block: DocBlock) -> list:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    commands, pending = [], ''
    for raw in block.text.splitlines():
        line = strip_comment(raw)
        if line.endswith('\\'):
            pending += line[:-1].rstrip() + ' '
            continue
        command = ' '.join((pending + line).split())
        pending = ''
        if command:
            commands.append(command)
    return commands


def documented_commands(block: DocBlock) -> list:
    return shell_commands(block) if block.language != 'python' else [block.text.strip()]


def untested_commands() -> dict:
    """docs/untested_commands.md's table: command -> reason."""
    listed = {}
    for line in UNTESTED_PAGE.read_text(encoding='utf-8').splitlines():
        match = re.match(r'^\| `(.+)` \| (.+) \|$', line)
        if match:
            listed[' '.join(match.group(1).split())] = match.group(2).strip()
    return listed


def test_every_untested_entry_has_a_reason_and_is_still_documented():
    listed = untested_commands()
    assert listed, 'the untested-commands table did not parse'
    documented = {command for block in doc_blocks() for command in documented_commands(block)}
    stale = sorted(set(listed) - documented)
    assert not stale, f'docs/untested_commands.md lists commands no page documents: {stale}'
    assert all(len(reason) > 10 for reason in listed.values())


def test_the_command_parser_keeps_what_a_shell_runs():
    block = DocBlock(ROOT / 'README.md', 1, 'bash', "# a comment\npython a.py --x '#not' \\\n    --y 2   # why\n\nbash b.sh\n")
    assert shell_commands(block) == ["python a.py --x '#not' --y 2", 'bash b.sh']


# --- running the commands ------------------------------------------------------------------------------

def config_model_name(config_file: str) -> str:
    data = yaml.safe_load((ROOT / config_file).read_text()) or {}
    return str((data.get('MODEL') or {}).get('NAME', ''))


def rewrite(command: str) -> str:
    """The command as the test runs it: placeholders filled in; the entry points on short schedules and
    on the tiny CLIP. Nothing else of the documented command changes."""
    command = fill_placeholders(command)
    words = shlex.split(command)
    if any(word in ENTRY_POINTS for word in words[:3]):
        extra = []
        if '--config_file' in words:
            extra += TINY_STAND_INS.get(config_model_name(words[words.index('--config_file') + 1]), [])
        extra += SHORT_SCHEDULE
        command += ' ' + ' '.join(shlex.quote(word) for word in extra)
    return command


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    """A folder that looks like the repository root (its files linked) with its own data/ and logs/,
    and `python` on the PATH meaning the interpreter that runs the tests."""
    folder = tmp_path_factory.mktemp('docs')
    for entry in ROOT.iterdir():
        if entry.name not in ('.git', 'data', 'logs', '.pytest_cache') and not entry.name.startswith('.'):
            (folder / entry.name).symlink_to(entry)
    bin_dir = folder / '.bin'
    bin_dir.mkdir()
    (bin_dir / 'python').symlink_to(sys.executable)
    # demo.sh splits DEMO_OPTS on blanks, so no value of SHORT_SCHEDULE holds one.
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', PYTHON=sys.executable,
               DEMO_OPTS=' '.join(SHORT_SCHEDULE), PYTHONPATH=str(folder))
    return folder, env


def fill_placeholders(text: str) -> str:
    for placeholder, stand_in in PLACEHOLDERS.items():
        text = text.replace(placeholder, stand_in)
    return text


def run_block(block: DocBlock, folder: Path, env: dict, untested: dict, already_run: set) -> str:
    """Run a block's commands that are neither listed as untested nor already run (the same command on
    two pages runs once); return what went wrong ('' if nothing)."""
    if block.language == 'python':
        if block.text.strip() in untested:
            return ''
        done = subprocess.run([sys.executable, '-c', fill_placeholders(block.text)], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
        return '' if done.returncode == 0 else f'{block.where}: python block exited {done.returncode}: {done.stderr[-1500:]}'
    for command in shell_commands(block):
        if command in untested or command in already_run:
            continue
        already_run.add(command)
        done = subprocess.run(['bash', '-c', rewrite(command)], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            return f'{block.where}: `{command}` exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}'
    return ''


def page_rank(block: DocBlock) -> int:
    return PAGE_ORDER.index(block.page.name) if block.page.name in PAGE_ORDER else len(PAGE_ORDER)


@pytest.mark.slow
def test_every_documented_command_runs_as_written(scratch):
    folder, env = scratch
    untested, already_run = untested_commands(), set()
    failures = [problem for block in sorted(doc_blocks(), key=page_rank)
                if (problem := run_block(block, folder, env, untested, already_run))]
    assert not failures, '\n\n'.join(failures)


# --- the untested ones, checked statically -------------------------------------------------------------

def script_of(words: list) -> tuple:
    """(script path, its arguments) of a `python X.py ...`, `bash X.sh ...` or `torchrun ... X.py ...`."""
    for i, word in enumerate(words):
        if word.endswith(('.py', '.sh')) and not word.startswith('-'):
            return word, words[i + 1:]
    return '', []


@functools.lru_cache(maxsize=None)
def accepted_flags(script: str) -> str:
    command = ['bash', script, '--help'] if script.endswith('.sh') else [sys.executable, script, '--help']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHON=sys.executable))
    return done.stdout + done.stderr


@pytest.mark.slow
def test_untested_commands_name_real_scripts_flags_and_keys():
    from config import load_config

    problems = []
    scripts = {script_of(shlex.split(command))[0] for command in untested_commands()}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # each --help is a Python start-up
        list(pool.map(accepted_flags, sorted(script for script in scripts if script and (ROOT / script).is_file())))
    for command in untested_commands():
        words = shlex.split(command)
        if words[0] in ('pip', 'python') and words[1:2] in (['install'], ['-m']):
            continue  # the install and test commands: .ci/run runs them
        script, args = script_of(words)
        if not script or not (ROOT / script).is_file():
            problems.append(f'{command}: no script {script!r}')
            continue
        flags = [arg.split('=')[0] for arg in args if arg.startswith('--')]
        if flags:
            help_text = accepted_flags(script)
            problems += [f'{command}: {script} has no flag {flag}' for flag in flags
                         if not re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', help_text)]
        if '--config_file' in args:
            position = args.index('--config_file')
            opts = [arg for arg in args[position + 2:] if not arg.startswith('-') and arg != '...']
            try:
                load_config(str(ROOT / args[position + 1]), opts)
            except Exception as error:  # the config's own message says what is wrong
                problems.append(f'{command}: {error}')
    assert not problems, '\n'.join(problems)
