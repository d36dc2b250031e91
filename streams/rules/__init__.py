"""Pure rules: take events and the current event time, return what to emit. No I/O, no clock."""
