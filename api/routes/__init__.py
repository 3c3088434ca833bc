"""Thin routes: parse, call a service, commit, shape the response."""
