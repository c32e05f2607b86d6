"""llama.cpp's own server test suite, run against llama-server and a built file.

`python -m compat.peer_suite` (or `make compat`) runs the suite twice on the same
GGUF and writes compat/RESULTS.md; `compat.plugin` is the pytest plugin the suite
runs under, `compat.junit`, `compat.verdicts` and `compat.report` turn the two
junit files into that table.
"""
