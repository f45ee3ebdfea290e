"""``mpray.experimental``: APIs that Ray marks experimental (``tqdm_ray``).

Submodules are imported on use (``from mpray.experimental import tqdm_ray``), so that
``import mpray`` pays nothing for them.
"""
