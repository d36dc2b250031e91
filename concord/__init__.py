"""Concord: streaming data-consistency pipeline for order flows."""
