"""Building blocks and op wrappers: thin, validated Python faces of torch.ops.detzoo.* and the
small modules (convs, norms, losses) that models are made of. Nothing here imports
detzoo.structures."""
# Each module adds its public names below (one import line per module).
