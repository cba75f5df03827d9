"""Helpers of the hostkv Cobbler modules: option validation, repo publishing, configuration."""
