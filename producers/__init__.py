"""Sample-event producers: the command side that appends to the log."""
