#!/usr/bin/env python3
"""Validate a release folder and upload it to the Hugging Face Hub repo <org>/<arch>.<tag>.

    python tools/push_to_hub.py model_cards/fsr_resnet18.at_cifar10 [--org ORG] [--private] [--dry-run]

Validation: required files present, weights load strictly into the architecture of config.json, sha256 equals
config.json's, results.json's and the registry pin, and the card's numbers equal results.json. The token comes
from HF_TOKEN or `hf auth login`. --dry-run prints the repo id and each file with its size and sha256, nothing else.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import fsr_hub  # noqa: E402,F401  (registers the models)
from fsr_hub.release import ReleaseError, push_release  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', help='release folder, e.g. model_cards/fsr_resnet18.at_cifar10')
    p.add_argument('--org', help='hub organisation (default FSR_HUB_ORG or fsr-hub)')
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
