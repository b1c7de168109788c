"""Tests of chatkeep's code alone in the test's process: no chatkeep server, at most the fake upstream."""
