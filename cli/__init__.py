"""The ``beamline`` command line: every verb, argument parsing, one-line errors.

This is the top layer: it may import every other package, and none imports it.
Each verb lives in the module of its concern (``services``, ``produce``,
``run``, ``read``); :mod:`cli.main` puts them together.
"""
