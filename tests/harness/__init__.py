"""Test harness: real guests, real daemons, started and torn down by the tests themselves."""
