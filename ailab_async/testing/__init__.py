"""Testing your code without the API: the local simulator and the pytest plugin.

- :mod:`ailab_async.testing.simulator`: a local, seeded simulator of the API
  (``pip install 'ailab-async[simulator]'``);
- :mod:`ailab_async.testing.pytest_plugin`: fixtures named ``ailab_*`` (installed with the
  package, loaded by pytest automatically).
"""
