"""Training: the loop every job shares (loop), what one step minimises and how an epoch is
judged (objective), the batch-norm pass (batchnorm), DDP under torchrun (distributed), plain
words about a run that went wrong (diagnostics), and the train job (job). Imports from every
floor below: contracts, output, profile, data and models.
"""
