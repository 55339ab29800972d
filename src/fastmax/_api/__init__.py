"""Layer 1: public functions — validate, normalise, dispatch to one kernel."""
