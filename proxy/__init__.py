"""The Model Factory routing proxy: one address in front of every model service."""
