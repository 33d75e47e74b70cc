"""The run: the ground every command stands on.

- :mod:`machlite.runs.layout`: one run's folder (every file name in it).
- :mod:`machlite.runs.load`: a checkpoint's task and datamodule, loaded (``load_run``).
"""
