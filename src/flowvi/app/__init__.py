"""The application side of flowvi: the ``flowvi`` command (:mod:`flowvi.app.cli`), one module
per command (``fit``, ``density``, ``estimators``, ``cavi``, ``vae``, ``show``) turning a
configuration into a run directory, and the run skeleton they share
(:mod:`flowvi.app.rundir`). The library outside this package imports nothing from it."""
