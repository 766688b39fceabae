"""Test support code shared by several test areas (real peers, fixtures, builders)."""
