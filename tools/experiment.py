"""Train and test one config once per seed, then summarise: mean ± sample std, min, max and n per protocol.

    python tools/experiment.py --config_file CFG --seeds 1 2 3 --output DIR [KEY VALUE ...]
    python tools/experiment.py --config_file CFG --test-only A.pth B.pth [--seeds 1 2] --output DIR [KEY VALUE ...]

Each seed runs in DIR/seed_<n>/ (train_clipreid.py with SOLVER.SEED n, or test_clipreid.py with
TEST.WEIGHT); a finished seed is skipped and an interrupted one resumes, so the same command can be run
again after a stop. DIR gets summary.json, summary.csv, summary.md and summary.png
(processor/experiment.py, reporting/summary.py). Options go before the KEY VALUE overrides.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from processor.experiment import Experiment, parse_seeds, seeds_of_checkpoints  # noqa: E402
from reporting.summary import summary_table  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line, exit 2, like every other mistake
        raise UserError(message)


def parse_args(argv):
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument('--config_file', default='', help='YAML config file (keys: config/defaults.py)')
    parser.add_argument('--seeds', nargs='+', default=None, metavar='N',
                        help='SOLVER.SEED of each run (with --test-only: optional, read from the checkpoints)')
    parser.add_argument('--output', required=True, help='the experiment folder (DIR/seed_<n>/ per seed)')
    parser.add_argument('--test-only', nargs='+', default=[], metavar='WEIGHT', dest='test_only',
                        help='evaluate these checkpoints (one per seed) instead of training')
    parser.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides for every seed')
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None, execute=None) -> dict:
    """`execute(command) -> exit code` runs one seed (default: a child process); returns summary.json's
    'summary'."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for weight in args.test_only:
        if not os.path.isfile(weight):
            raise UserError(f"--test-only '{weight}' does not exist")
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
    elif args.test_only:
        seeds = seeds_of_checkpoints(args.test_only)
    else:
        raise UserError('--seeds: name the seed of each run, e.g. --seeds 1 2 3')
    experiment = Experiment(args.config_file, args.opts, seeds, args.output, args.test_only)
    experiment.check_folder()
    experiment.write_description()
    experiment.run_seeds(execute)
    summary, paths = experiment.write_summary()
    print(f"\nover {len(seeds)} seed(s), mean ± sample std (%):\n{summary_table(summary)}")
    for path in paths:
        print(f"wrote {path}")
    return summary


if __name__ == '__main__':
    main()
