"""The read side of Beamline: read-only SQL, point lookups and time travel on the warehouse.

:mod:`readside.query` is what ``beamline query`` and ``beamline lookup`` run;
:mod:`readside.serve` is ``beamline serve``, the same reads over HTTP (a JSON API
and a live page).
"""

__all__: list[str] = []
