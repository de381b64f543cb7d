"""Data access: download, reading, QC, splitting and simulated atlases."""
