"""Renderers: numpy in, numpy or PNG bytes out; none writes files (:mod:`convlens.output` does)."""
