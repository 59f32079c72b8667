"""Prompt templates per kind and theme presets, kept as data files beside this module."""
