"""Value checks of an input batch, for the entry points that already synchronise with the device (evaluation,
verification, the main job). ``forward`` itself checks only shape and dtype, which cost no synchronisation."""
import torch

__all__ = ['check_pixels']


def check_pixels(x: torch.Tensor, what: str = 'input') -> None:
    """Raise ValueError unless ``x`` is a floating batch of finite values in [0, 1] (raw RGB pixels, no
    normalisation). Reads the values, so it synchronises with the device: call it once per evaluation."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'{what}: expected a torch.Tensor of float pixels in [0, 1], got {type(x).__name__} '
                         f'(convert with torch.from_numpy(...)).')
    if not torch.is_floating_point(x):
        raise ValueError(f'{what}: expected float pixels in [0, 1], got dtype {x.dtype} (divide uint8 images by 255).')
    if x.numel() == 0:
        return
    finite = torch.isfinite(x).all()
    lo, hi = x.min(), x.max()
    if not bool(finite):
        raise ValueError(f'{what}: contains NaN or infinite values.')
    if lo < 0 or hi > 1:
        hint = ' (0-255 images? divide by 255)' if hi > 1.5 else ''
        raise ValueError(f'{what}: values must lie in [0, 1] (raw RGB pixels, no normalisation), found '
                         f'[{float(lo):.4g}, {float(hi):.4g}]{hint}.')
