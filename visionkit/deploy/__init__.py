"""Taking a trained model out of the training stack: export with a parity check, run, profile, explain."""
