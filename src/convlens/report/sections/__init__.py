"""The built-in sections, one module each; importing :mod:`convlens.report` registers them."""
