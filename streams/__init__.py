"""The pipeline: pure rules (streams.rules) and the Faust wiring around them."""
