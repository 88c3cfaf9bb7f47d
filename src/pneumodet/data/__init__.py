"""From a folder in the Kaggle layout to a checked, cached, split data set."""
