"""The commands: one job each, behind an entry point (train.py, translate.py, scripts/*.py) and an installed
`mt-*` program. A command composes library rooms and imports no other command."""
