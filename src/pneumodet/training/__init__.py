"""Training with Lightning: the only package that imports it (model, data and predict work without)."""
