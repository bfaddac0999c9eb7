"""Tables, figures, statistics and the paper tables, built from run records alone (``tables`` holds the
building blocks, ``report`` orchestrates a suite's report). Imports ``common``, ``training`` (for
``reproduce`` only) and ``scaleout``.
"""
