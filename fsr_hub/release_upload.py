"""Upload of a validated release folder (:func:`fsr_hub.release_checks.validate_release`) to the hub repo its
config.json names: :func:`upload_plan` lists the files, :func:`push_release` uploads them.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .release_checks import CARD_NAME, PathLike, ReleaseError, validate_release
from .weights import sha256_file

__all__ = ['upload_plan', 'push_release']


def upload_plan(folder: PathLike) -> List[Dict[str, Any]]:
    """Every file that would be uploaded: ``{'path', 'size', 'sha256'}`` (hidden files are skipped)."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob('*'))
             if p.is_file() and not any(s.startswith('.') for s in p.relative_to(folder).parts)]
    return [{'path': p.relative_to(folder).as_posix(), 'size': p.stat().st_size, 'sha256': sha256_file(p)}
            for p in files]


def push_release(folder: PathLike, org: Optional[str] = None, private: bool = False, dry_run: bool = False,
                 api: Any = None, print_fn: Callable[[str], Any] = print) -> str:
    """Validate ``folder`` and upload it to the hub repo of its config.json; with ``dry_run`` only print the plan.

    ``org``, when given, must be the organisation the card was rendered for. ``api`` is a
    :class:`huggingface_hub.HfApi` (default: one with huggingface_hub's usual HF_TOKEN / login lookup).
    Returns the repo id.
    """
    info = validate_release(folder)
    repo_id = info.hub_id
    rendered_for = repo_id.partition('/')[0]
    if org and org != rendered_for:
        raise ReleaseError(f'{info.folder / CARD_NAME} was rendered for the hub organisation {rendered_for}, not '
                           f'{org}; re-render it with: python tools/make_card.py --folder {info.folder} --org {org}')
    plan = upload_plan(info.folder)
    print_fn(f'{"[dry-run] would upload" if dry_run else "uploading"} {info.folder} -> '
             f'https://huggingface.co/{repo_id} ({"private" if private else "public"})')
    for f in plan:
        print_fn(f"  {f['path']}  {f['size']} bytes  sha256 {f['sha256']}")
    if dry_run:
        return repo_id
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
    api.upload_folder(repo_id=repo_id, folder_path=str(info.folder), repo_type='model',
                      commit_message=f'Release {info.name} (sha256 {info.sha256[:12]})',
                      allow_patterns=[f['path'] for f in plan])
    print_fn(f'uploaded {len(plan)} files to https://huggingface.co/{repo_id}')
    return repo_id
