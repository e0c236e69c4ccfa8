"""Retrieval evaluation on CUHK-PEDES, ICFG-PEDES and RSTPReid: `python -m eval --help`."""
