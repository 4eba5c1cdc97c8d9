"""The read side of Beamline: read-only SQL, point lookups and time travel on the warehouse."""

__all__: list[str] = []
