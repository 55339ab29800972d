"""Layer 2: jitted numeric kernels.  No validation happens here."""
