"""The docs' shell and Python blocks, run (docs/contributing.md says how)."""
