"""Handlers turn one validated request into result events. They never touch the broker."""
