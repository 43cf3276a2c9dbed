"""Print the results_<PROTOCOL>.json of two output folders side by side (e.g. untrained vs trained).

    python tools/compare_results.py logs/demo_mssl_synthetic/untrained logs/demo_mssl_synthetic/test
"""
import argparse
import glob
import json
import os
import sys


def read_results(folder: str) -> dict:
    """{protocol: results} of every results_<PROTOCOL>.json in `folder`, in the order they were written."""
    results = {}
    for path in sorted(glob.glob(os.path.join(folder, 'results_*.json')), key=os.path.getmtime):
        with open(path) as handle:
            record = json.load(handle)
        results[record.get('mode', os.path.basename(path)[len('results_'):-len('.json')])] = record
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('before')
    parser.add_argument('after')
    args = parser.parse_args(argv)
    before, after = read_results(args.before), read_results(args.after)
    modes = [mode for mode in after if mode in before]
    if not modes:
        print(f'error: no results_<PROTOCOL>.json common to {args.before} and {args.after}', file=sys.stderr)
        return 2
    print(f"{'protocol':<8} {'mAP before':>10} {'mAP after':>10} {'x':>6} {'R1 before':>10} {'R1 after':>9} "
          f"{'mINP after':>10}")
    for mode in modes:
        b, a = before[mode], after[mode]
        ratio = a['mAP'] / b['mAP'] if b['mAP'] > 0 else float('inf')
        print(f"{mode:<8} {b['mAP']:>10.1%} {a['mAP']:>10.1%} {ratio:>6.1f} {b['rank1']:>10.1%} "
              f"{a['rank1']:>9.1%} {a['mINP']:>10.1%}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
