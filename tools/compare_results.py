"""Print the results_<MODE>.json of two output folders side by side (e.g. untrained vs trained).

    python tools/compare_results.py logs/demo_mssl_synthetic/untrained logs/demo_mssl_synthetic/test
"""
import argparse
import json
import os
import sys

MODES = ('S2G', 'G2S', 'DDC')


def read_results(folder: str) -> dict:
    results = {}
    for mode in MODES:
        path = os.path.join(folder, f'results_{mode}.json')
        if os.path.isfile(path):
            with open(path) as handle:
                results[mode] = json.load(handle)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('before')
    parser.add_argument('after')
    args = parser.parse_args(argv)
    before, after = read_results(args.before), read_results(args.after)
    modes = [mode for mode in MODES if mode in before and mode in after]
    if not modes:
        print(f'error: no results_<MODE>.json common to {args.before} and {args.after}', file=sys.stderr)
        return 2
    print(f"{'mode':<5} {'mAP before':>10} {'mAP after':>10} {'x':>6} {'R1 before':>10} {'R1 after':>9} "
          f"{'mINP after':>10}")
    for mode in modes:
        b, a = before[mode], after[mode]
        ratio = a['mAP'] / b['mAP'] if b['mAP'] > 0 else float('inf')
        print(f"{mode:<5} {b['mAP']:>10.1%} {a['mAP']:>10.1%} {ratio:>6.1f} {b['rank1']:>10.1%} "
              f"{a['rank1']:>9.1%} {a['mINP']:>10.1%}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
