"""Integrations with optional dependencies, each imported on its own:

- :mod:`ailab_async.contrib.redis`: a rate budget shared by many processes through Redis
  (``pip install 'ailab-async[redis]'``);
- :mod:`ailab_async.contrib.dask`: the recipe for fanning a photo set out over a Dask
  cluster (``pip install 'ailab-async[dask]'``).
"""
