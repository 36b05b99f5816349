"""Training and evaluation of the shipped models: datasets, recipes, metrics."""
