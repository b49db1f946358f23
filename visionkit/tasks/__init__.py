"""Built-in tasks; each registers itself through the public registry API, as a plugin would."""
