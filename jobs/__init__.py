"""Jobs of the project that are not part of the package: run from a checkout by ``tools/*.py``, never shipped."""
