"""The log format's version number: readers refuse newer files and upcast older ones."""

FORMAT_VERSION = 1
"""Version written by this moetape. Bump it when the layout changes; add an upcaster for the old one."""

OLDEST_READABLE = 1
"""Oldest format_version this moetape can still read (by upcasting in memory)."""
