"""Renderers: they take a frozen `Report` and write it out, computing nothing."""
