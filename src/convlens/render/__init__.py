"""Renderers: numpy in, numpy or PNG bytes out; only :mod:`.png` writes files."""
