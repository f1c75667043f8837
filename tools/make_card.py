#!/usr/bin/env python3
"""Build a hub release folder from a verified checkpoint, or re-render the card of an existing one.

    # weights + their verify report -> model_cards/<arch>.<tag>/{model.safetensors,config.json,results.json,README.md}
    python tools/make_card.py results.json [--weights FILE] [--out model_cards] [--tag at_cifar10]
                              [--model-args '{"fsr_tau": 0.1}'] [--org ORG] [--overwrite]
    # re-render README.md of a release folder from its results.json + config.json
    python tools/make_card.py --folder model_cards/fsr_resnet18.at_cifar10
    # compare a release with its twin (FSR vs vanilla, same command) on the same images; both cards show it
    python tools/make_card.py --folder model_cards/fsr_resnet18.at_cifar10 --twin model_cards/cifar_resnet18.at_cifar10
    # a fine-tuned model (its train summary records --init-from): per-class accuracy before / after on the card
    python tools/make_card.py results.json --tag adml_cifar10 \\
        --before model_cards/fsr_resnet18.fgsmrs_cifar10/results.json
    # re-render the project README's table of released weights (between its <!-- released:... --> markers)
    python tools/make_card.py --readme README.md

results.json is the verify report of the training/evaluation tools (schema fsr-hub/verify/v1) for exactly the
weight file released (its model.sha256 must match). The card's cost numbers are counted once on the model and
written into results.json under "cost" (the paper's numbers for the setting under "paper_reference"), so the
card is rendered from results.json and config.json alone (plus the plots of tools/analyze.py present in the
folder). The hub organisation is stored in config.json ("hub_id"); --org with --folder moves the release to
another organisation.

The card's per-class section (clean and PGD-20 accuracy per class, from the report's per_class numbers) comes
with per_class.png, written here (matplotlib, the analysis extra). For a fine-tuned model (--init-from in its
train summary) the start model's numbers stand beside them: from --before (the start model's results.json), else
from the start release's folder when it is at hand.
"""
import argparse
import json
import sys
from pathlib import Path

from fsr_hub.card import PER_CLASS_PNG, per_class_section
from fsr_hub.release import (
    CONFIG_NAME, RESULTS_NAME, ReleaseError, assemble_release, attach_twin, validate_release, write_card,
    write_readme_table,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('results', nargs='?', help='verify report (results.json) of the weights to release')
    p.add_argument('--folder', help='re-render the card of this existing release folder instead')
    p.add_argument('--weights', help="weight file (default: the report's model.weights)")
    p.add_argument('--out', default='model_cards', help='parent folder of release folders (default model_cards)')
    p.add_argument('--tag', help="release tag when the report's model.tag is null")
    p.add_argument('--model-args', default='{}', help='JSON object of constructor arguments the weights need '
                                                      "(default: the verify report's model.model_args)")
    p.add_argument('--org', help='hub organisation of the release (default fsr-hub; --folder: the stored one)')
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty release folder')
    p.add_argument('--twin', help='with --folder: its twin release folder (FSR vs vanilla, same command); stores '
                                  'FSR - vanilla on the same images in both results.json files and both cards')
    p.add_argument('--before', help="fine-tuned model: the results.json of the weights it started from (default: "
                                    "the start release folder's, when at hand)")
    p.add_argument('--readme', help="rewrite this README's table of released weights (after --folder, or alone)")
    args = p.parse_args(argv)
    if args.results and args.folder or not (args.results or args.folder or args.readme):
        p.error('give a results.json or --folder (or --readme alone)')
    if args.twin and not args.folder:
        p.error('--twin goes with --folder')
    try:
        if args.readme and not args.folder and not args.results:
            print(f'wrote {write_readme_table(args.readme)}')
            return 0
        if args.folder:
            path = write_card(args.folder, org=args.org, before=args.before)
            validate_release(args.folder)
            print(f'wrote {path}')
            if args.twin:
                section = attach_twin(args.folder, args.twin)
                validate_release(args.twin)
                gaps = ', '.join(f"{r['name']} {r['gap']:+.2f} ± {r['ci95']:.2f}" for r in section['rows'])
                print(f"FSR - vanilla ({section['fsr']['name']} - {section['vanilla']['name']}): {gaps}")
            _note_per_class(Path(args.folder))
            if args.readme:
                print(f'wrote {write_readme_table(args.readme)}')
            return 0
        try:
            results = json.loads(Path(args.results).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReleaseError(f'{args.results}: cannot read the verify report ({e}).') from e
        try:
            model_args = json.loads(args.model_args)
        except json.JSONDecodeError as e:
            raise ReleaseError(f'--model-args is not valid JSON ({e}).') from e
        if not isinstance(results, dict) or not isinstance(model_args, dict):
            raise ReleaseError(f'{args.results} and --model-args must hold JSON objects.')
        weights = args.weights or (results.get('model') or {}).get('weights')
        if not weights:
            raise ReleaseError(f'{args.results}: model.weights is empty; pass --weights.')
        info = assemble_release(args.out, weights, results, model_args=model_args, tag=args.tag, org=args.org,
                                overwrite=args.overwrite, before=args.before)
    except ReleaseError as e:
        print(f'make_card: error: {e}', file=sys.stderr)
        return 2
    print(f'wrote release folder {info.folder} (sha256 {info.sha256})')
    _note_per_class(info.folder)
    return 0


def _note_per_class(folder: Path) -> None:
    """Say why the card has no per-class section when the report has per-class numbers but no figure came."""
    results = json.loads((folder / RESULTS_NAME).read_text())
    config = json.loads((folder / CONFIG_NAME).read_text())
    if per_class_section(results, config) is not None and not (folder / PER_CLASS_PNG).is_file():
        print(f"make_card: note: {PER_CLASS_PNG} not written (matplotlib is not installed: pip install "
              f"'fsr-hub[analysis]'), so the card has no per-class section.", file=sys.stderr)


if __name__ == '__main__':
    sys.exit(main())
