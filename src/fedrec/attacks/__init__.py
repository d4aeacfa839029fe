"""Attacks on what crosses the wire (our protocol, fellrec.md §6)."""
