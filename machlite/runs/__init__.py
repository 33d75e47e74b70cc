"""The run: the ground every command stands on.

Its modules, from the bottom up (each imports only those above it in this list):

- :mod:`machlite.runs.layout`: one run's folder (every file name in it);
- :mod:`machlite.runs.names`: the names of runs in a sweep or search folder;
- :mod:`machlite.runs.settings`: a run's settings, a base config plus an override block;
- :mod:`machlite.runs.records`: what a run recorded, read back (scalars, HPARAMS, done.json);
- :mod:`machlite.runs.launcher`: running many runs, each a job process, ``--jobs`` at a time;
- :mod:`machlite.runs.placement`: where a ``machlite fit`` writes, and resuming it;
- :mod:`machlite.runs.job`: one run in its own process: fit, test, ``done.json``;
- :mod:`machlite.runs.hardware`: a run's hardware costs (``hardware.json``), measured in its
  job when its settings ask;
- :mod:`machlite.runs.load`: a checkpoint's task and datamodule, loaded (``load_run``).

This ``__init__`` imports none of them, so a light command may use the light ones.
"""
