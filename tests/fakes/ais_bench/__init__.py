"""FAKE ais_bench (tests only): see tests/fakes/README.md."""
