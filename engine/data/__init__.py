"""From a profile's data to tensors: sample records, patient pseudonyms, patches and their
disk cache, patient splits, PyTorch datasets and the augmentation pipeline. Imports from
contracts, output and profile.
"""
