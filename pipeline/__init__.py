"""twostep pipeline: models, data, training, pruning, codec, cost model and selection.

Pure PyTorch and numpy; nothing in this package imports Ray.
"""
