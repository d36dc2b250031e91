"""The public contract as pydantic v2 models. No I/O beyond reading a YAML file on request."""
