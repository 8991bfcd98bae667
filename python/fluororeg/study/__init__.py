"""Studies: many subjects, many recordings, many machines (``fluororeg study``, on Dask).

:mod:`.manifest` reads the study's TOML manifest, :mod:`.inputs` opens and checks the files it
names, :mod:`.models` builds one subject's models, :mod:`.graph` is the task graph,
:mod:`.run` runs it on ``dask.distributed`` and :mod:`.summary` writes the study's summary.
Only :mod:`.run` needs Dask (the ``study`` extra); it is imported when a study runs.
"""
