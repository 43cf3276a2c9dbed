"""Compare two output folders: their results_<PROTOCOL>.json side by side, and what differs between
their manifest.json files (code, packages, device, config, datasets, seed).

    python tools/compare_results.py logs/demo_mssl_synthetic/untrained logs/demo_mssl_synthetic/test

Times, memory, dates and the output folders themselves differ in every run and are not listed.
"""
import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reporting.manifest import manifest_differences, read_manifest  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

LONGEST_VALUE = 70


def read_results(folder: str) -> dict:
    """{protocol: results} of every results_<PROTOCOL>.json in `folder`, in the order they were written."""
    results = {}
    for path in sorted(glob.glob(os.path.join(folder, 'results_*.json')), key=os.path.getmtime):
        try:
            with open(path) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            raise UserError(f"'{path}' cannot be read as a results file") from None
        results[record.get('mode', os.path.basename(path)[len('results_'):-len('.json')])] = record
    return results


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= LONGEST_VALUE else text[:LONGEST_VALUE - 3] + '...'


def manifest_report(before: str, after: str) -> list[str]:
    """Lines saying what differs between the two folders' manifests."""
    manifests = {folder: read_manifest(folder) for folder in (before, after)}
    missing = [folder for folder, manifest in manifests.items() if manifest is None]
    if missing:
        return [f"no manifest.json in {' and '.join(missing)}: what ran there cannot be compared"]
    differences = manifest_differences(manifests[before], manifests[after])
    if not differences:
        return ['the manifests agree: same code, packages, device, config, datasets and seed']
    width = max(len(key) for key, _, _ in differences)
    lines = [f"the manifests differ in {len(differences)} entr{'y' if len(differences) == 1 else 'ies'} "
             f"(before | after):"]
    lines += [f"  {key:<{width}}  {_shown(a)} | {_shown(b)}" for key, a, b in differences]
    return lines


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('before')
    parser.add_argument('after')
    args = parser.parse_args(argv)
    for folder in (args.before, args.after):
        if not os.path.isdir(folder):
            raise UserError(f"'{folder}' is not a folder")
    before, after = read_results(args.before), read_results(args.after)
    modes = [mode for mode in after if mode in before]
    if not modes and read_manifest(args.before) is None and read_manifest(args.after) is None:
        raise UserError(f"no results_<PROTOCOL>.json common to {args.before} and {args.after}, and no manifest.json")
    if modes:
        print(f"{'protocol':<8} {'mAP before':>10} {'mAP after':>10} {'x':>6} {'R1 before':>10} {'R1 after':>9} "
              f"{'mINP after':>10}")
        for mode in modes:
            b, a = before[mode], after[mode]
            ratio = a['mAP'] / b['mAP'] if b['mAP'] > 0 else float('inf')
            print(f"{mode:<8} {b['mAP']:>10.1%} {a['mAP']:>10.1%} {ratio:>6.1f} {b['rank1']:>10.1%} "
                  f"{a['rank1']:>9.1%} {a['mINP']:>10.1%}")
    else:
        print(f"no results_<PROTOCOL>.json common to {args.before} and {args.after}")
    print('\n'.join(manifest_report(args.before, args.after)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
