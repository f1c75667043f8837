#!/usr/bin/env python3
"""Validate a release folder and upload it to the Hugging Face Hub repo of its config.json (<org>/<arch>.<tag>).

    python tools/push_to_hub.py model_cards/fsr_resnet18.at_cifar10 [--org ORG] [--private] [--dry-run]

Validation: required files present, weights load strictly into the architecture of config.json, sha256 equals
config.json's, results.json's and, for a name fsr_hub.catalog.RELEASED pins, that pin; and the card is exactly the one
results.json and config.json render to. The token comes
from HF_TOKEN or `hf auth login`. --dry-run prints the repo id and each file with its size and sha256, nothing else.
"""
import argparse
import sys

from fsr_hub.release import ReleaseError, push_release


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', help='release folder, e.g. model_cards/fsr_resnet18.at_cifar10')
    p.add_argument('--org', help='expected hub organisation: refuse a card rendered for another')
    p.add_argument('--private', action='store_true', help='create the repo private')
    p.add_argument('--dry-run', action='store_true', help='validate and print the upload plan only')
    args = p.parse_args(argv)
    try:
        push_release(args.folder, org=args.org, private=args.private, dry_run=args.dry_run)
    except ReleaseError as e:
        print(f'push_to_hub: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
