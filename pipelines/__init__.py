"""Runnable pipelines wired from `transforms`, and the `beamline` command line."""
